//! The pod OS-mismatch detector: watches Pods and `FailedCreatePodSandBox` Events, and flags each pod,
//! container and failure episode once: a Warning Event with the remediation, a gauge while it lasts, a
//! counter, and (with `--annotate-pods`) an annotation.
//!
//! Pure parts: [`detect`] finds failures in a pod or an Event, [`remedy`] words the finding, [`episodes`]
//! decides what to flag and clear, [`ambiguous`] decides containerd's ambiguous pull error from the image's
//! platforms. This module is the driver: it feeds watch events in, reads the images of ambiguous pull
//! errors from their registries (cached), and carries the effects out. It reads the Node index and never
//! the node controller. Pods are decoded as [`watched::WatchedPod`]s: only the fields the decisions read.

pub mod ambiguous;
pub mod detect;
pub mod episodes;
pub mod remedy;
pub mod watched;

use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::FIELD_MANAGER;
use crate::events::api_error_category;
use crate::registry::{Freshness, Registry};
use crate::shared::{Repeats, Shared};
use crate::supervisor::Supervisor;
use crate::watches::{initial_state_watcher, observe_watch, probe_failing_watch};
use detect::{SANDBOX_EVENT_REASON, sandbox_failure};
use episodes::{Effect, Episodes, Flag, PodRef};
use watched::WatchedPod;

/// The loop's name in liveness and in `osbuild_reconcile_errors_total{controller}`.
pub const CONTROLLER: &str = "pod-detector";
/// The Event reason on a flagged Pod.
pub const EVENT_REASON: &str = "OSVersionMismatch";
pub const PODS_WATCH: &str = "pods";
pub const SANDBOX_EVENTS_WATCH: &str = "pod-sandbox-events";
/// Our own mismatch Events (which episodes the leader has reported); not a readiness watch.
pub const PUBLISHED_EVENTS_WATCH: &str = "published-events";

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
    let (pods, events): (Api<WatchedPod>, Api<CoreEvent>) = match &options.namespace {
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
    Pod(Box<Result<watcher::Event<WatchedPod>, watcher::Error>>),
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
    (pods, events, sandbox_events): (Api<WatchedPod>, Api<CoreEvent>, watcher::Config),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut synced = shared.nodes_synced.clone();
    tokio::select! {
        result = synced.wait_for(|synced| *synced) => if result.is_err() { return Ok(()) },
        () = shutdown.cancelled() => return Ok(()),
    }
    let strategy = shared.initial_list;
    let pod_stream = initial_state_watcher(pods, watcher::Config::default(), strategy, PODS_WATCH)
        .map(|e| Input::Pod(Box::new(e)));
    let event_stream = initial_state_watcher(
        events.clone(),
        sandbox_events,
        strategy,
        SANDBOX_EVENTS_WATCH,
    )
    .map(|e| Input::Sandbox(Box::new(e)));
    // Our own Events, so that every replica knows which episodes the leader has reported.
    let published_stream = initial_state_watcher(
        events,
        watcher::Config::default().fields(&format!("reason={EVENT_REASON}")),
        strategy,
        PUBLISHED_EVENTS_WATCH,
    )
    .map(|e| Input::Published(Box::new(e)));
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
    let mut unreadable = Unreadable::default();
    while let Some(input) = inputs.next().await {
        // Only episodes that begin while a watch is live are timed: one found in a (re-)list may have begun
        // long before this process, and a restart would flood the latency histogram with its age.
        let live = match &input {
            Input::Pod(event) => matches!(**event, Ok(watcher::Event::Apply(_))),
            Input::Sandbox(event) => matches!(**event, Ok(watcher::Event::Apply(_))),
            Input::Published(_) | Input::Tick => false,
        };
        let effects = match input {
            Input::Pod(event) => {
                observe_watch(&shared.health, &shared.metrics, PODS_WATCH, &event);
                match *event {
                    Ok(event) => {
                        let confirmed = match &event {
                            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                                let reads = (&*shared.registry, &mut unreadable);
                                confirm_ambiguous_pulls(&shared, reads, &episodes, pod.pod()).await
                            }
                            _ => Vec::new(),
                        };
                        on_pod_event(&shared, &mut episodes, event, &confirmed)
                    }
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
                    episodes.published(uid, detect::event_last_seen(&e));
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
            if let Some(flag) = carry_out(&shared, annotate, effect, live).await {
                episodes.reported(&flag.pod.uid, &flag.container);
            }
        }
    }
    Ok(())
}

fn on_pod_event(
    shared: &Shared,
    episodes: &mut Episodes,
    event: watcher::Event<WatchedPod>,
    confirmed: &[String],
) -> Vec<Effect> {
    match event {
        watcher::Event::Init => {
            episodes.relist_started();
            Vec::new()
        }
        watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
            let pod = pod.pod();
            let facts = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|node| shared.node_facts(node));
            episodes.pod_observed_confirmed(pod, facts.as_ref(), confirmed)
        }
        watcher::Event::Delete(pod) => episodes.pod_deleted(&pod.uid().unwrap_or_default()),
        watcher::Event::InitDone => episodes.relist_done(),
    }
}

/// The containers of a pod on a Windows node whose pull fails with containerd's ambiguous "no match for
/// platform in manifest" and whose image, read from its registry (cached; the pod's pull secrets when the
/// controller may read them, else anonymously), has Windows entries none of which the node runs. An image
/// that cannot be read is not flagged: nothing then shows the cause is the Windows build.
#[tracing::instrument(skip_all, fields(namespace, pod))]
async fn confirm_ambiguous_pulls(
    shared: &Shared,
    (registry, unreadable): (&Registry, &mut Unreadable),
    episodes: &Episodes,
    pod: &Pod,
) -> Vec<String> {
    let pulls = ambiguous::ambiguous_pulls(pod);
    if pulls.is_empty() {
        return Vec::new();
    }
    let (Some(spec), Some(namespace), Some(uid)) = (pod.spec.as_ref(), pod.namespace(), pod.uid())
    else {
        return Vec::new();
    };
    let Some(facts) = spec
        .node_name
        .as_deref()
        .and_then(|node| shared.node_facts(node))
        .filter(|f| f.windows)
    else {
        return Vec::new();
    };
    tracing::Span::current()
        .record("namespace", namespace.as_str())
        .record("pod", pod.name_any().as_str());
    let mut confirmed = Vec::new();
    let mut keyring = None;
    for pull in pulls {
        // An episode in progress stays one: its image was read when it began.
        if episodes.is_flagged(&uid, &pull.container) {
            confirmed.push(pull.container);
            continue;
        }
        if unreadable.recently(&pull.image) {
            continue;
        }
        if keyring.is_none() {
            keyring = Some(
                crate::pull_secrets::keyring(&shared.client, &namespace, spec)
                    .await
                    .0,
            );
        }
        let credential = keyring
            .as_ref()
            .map(|k| k.lookup(&pull.image))
            .unwrap_or_default();
        match registry
            .resolve(&pull.image, &credential, Freshness::Cached)
            .await
        {
            Ok(image) if ambiguous::is_platform_mismatch(&image.platforms, facts.version) => {
                confirmed.push(pull.container);
            }
            Ok(_) => tracing::debug!(
                container = pull.container,
                image = pull.image,
                "no match for platform, but not the Windows build: not the OS mismatch"
            ),
            Err(err) => {
                tracing::info!(
                    container = pull.container,
                    image = pull.image,
                    category = err.category(),
                    error = %err.detail,
                    "cannot read the image to tell containerd's pull error apart; not flagged"
                );
                unreadable.failed(pull.image);
            }
        }
    }
    confirmed
}

/// Images whose read failed lately. Each read may take up to `--registry-timeout` and the detector judges
/// one event at a time, so pods of an unreachable registry must not stall it: such an image is not read
/// again for [`Unreadable::RETRY_AFTER`] (its pods stay unflagged meanwhile, as any unreadable image).
#[derive(Debug, Default)]
struct Unreadable(std::collections::HashMap<String, std::time::Instant>);

impl Unreadable {
    const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
    /// Bounds the memory: past this many, expired entries go (and, if none has, all).
    const CAPACITY: usize = 1024;

    fn recently(&self, image: &str) -> bool {
        self.0
            .get(image)
            .is_some_and(|at| at.elapsed() < Self::RETRY_AFTER)
    }

    fn failed(&mut self, image: String) {
        if self.0.len() >= Self::CAPACITY {
            self.0.retain(|_, at| at.elapsed() < Self::RETRY_AFTER);
            if self.0.len() >= Self::CAPACITY {
                self.0.clear();
            }
        }
        self.0.insert(image, std::time::Instant::now());
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

/// Carries out one effect (`live`: it comes from a watch event, not a list); returns the flag whose Event
/// this replica has just published.
async fn carry_out(shared: &Shared, annotate: bool, effect: Effect, live: bool) -> Option<Flag> {
    match effect {
        Effect::Flagged { flag, message } => {
            flagged(shared, &flag, message, live).await.then_some(flag)
        }
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
async fn flagged(shared: &Shared, flag: &Flag, message: String, live: bool) -> bool {
    let metrics = &shared.metrics;
    metrics
        .pod_os_mismatch
        .with_label_values(&flag.gauge_labels())
        .set(1);
    metrics
        .pod_os_mismatch_detections
        .with_label_values(&flag.detection_labels())
        .inc();
    if live && let Some(since) = flag.visible_since {
        metrics
            .pod_os_mismatch_detection_latency
            .observe(detect::detection_latency(since, Timestamp::now()));
    }
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
            Event {
                type_: EventType::Warning,
                reason: EVENT_REASON.to_owned(),
                note: Some(message),
                action: "DetectOSMismatch".to_owned(),
                secondary: None,
            },
            Repeats::Never,
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
