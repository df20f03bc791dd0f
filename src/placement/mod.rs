//! The placement loop: pods the admission policy gated (`osbuild-controller.io/image-os`) are placed on
//! hosts that run their images. For each gated pod: read every image from its registry (with the pod's and
//! its ServiceAccount's pull secrets), [`decide::decide`], then one merge patch that adds the node affinity
//! and removes our gate, and an Event. Registry errors that may pass, and reads of the pod's pull secrets or
//! RuntimeClass that may pass, are retried with backoff until `--placement-deadline`; then the pod is
//! released without affinity. Only the leader writes; every
//! replica tracks the gated pods, so a new leader picks up where the old one stopped.

pub mod decide;
pub mod gauge;
pub mod pull_secrets;
pub mod tasks;
pub mod ungate;

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::core::labels::osbuild_value;
use crate::core::runs_on::Isolation;
use crate::events::api_error_category;
use crate::node_info::windows_version;
use crate::registry::Freshness;
use crate::shared::{Repeats, Shared};
use crate::supervisor::Supervisor;
use crate::watches::{initial_state_watcher, observe_watch};
use decide::{ClusterHost, Decision, ImageResult, Inputs, Release, Unread, decide, has_gate};
use gauge::{GatedPods, PlacementCollector};
use tasks::PodTasks;

/// The loop's name in liveness and in `osbuild_reconcile_errors_total{controller}`.
pub const CONTROLLER: &str = "placement";
pub const GATED_PODS_WATCH: &str = "placement-pods";
/// The placement watch sees only pods not bound to a node. Every gated pod is one: the API server refuses
/// a pod with both `spec.nodeName` and scheduling gates, and refuses to bind a pod that still has gates.
/// Bound pods (nearly all pods of a cluster) are never sent, so a restart does not stream them a second
/// time (the detector watches them all); a pod bound after it was watched leaves as a `Delete`.
pub const UNBOUND_PODS: &str = "spec.nodeName=";
/// Pods placed at once; the others wait their turn.
const CONCURRENCY: usize = 32;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Conflicts in a row retried at once, before backing off.
const MAX_CONFLICTS: u32 = 5;

enum Applied {
    Done,
    /// The pod changed since it was read (409 on its resourceVersion).
    Conflict,
    /// The API server refused the change itself (422): retrying the same patch cannot help.
    Invalid(String),
    Failed,
    /// No longer the leader (e.g. paused past its lease while it read the images): nothing written.
    NotLeader,
}

/// The placement loop's own options.
#[derive(Debug, Clone)]
pub struct PlacementOptions {
    /// `--placement-deadline`: how long a pod may stay gated while its registry fails.
    pub deadline: Duration,
    /// `--namespace`: only pods of this namespace; all when `None`.
    pub namespace: Option<String>,
}

struct Context {
    shared: Arc<Shared>,
    deadline: Duration,
}

/// Starts the loop; fails only when its metrics cannot be registered.
pub fn start(
    shared: &Arc<Shared>,
    options: &PlacementOptions,
    tasks: &mut Supervisor,
) -> anyhow::Result<()> {
    let gated = GatedPods::default();
    let context = Arc::new(Context {
        shared: shared.clone(),
        deadline: options.deadline,
    });
    shared.metrics.register(Box::new(PlacementCollector::new(
        gated.clone(),
        options.deadline,
    )?))?;
    let pods: Api<Pod> = match &options.namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    };
    shared.health.register_watch(GATED_PODS_WATCH);
    tasks.spawn(CONTROLLER, run(context, pods, gated, tasks.shutdown()));
    Ok(())
}

/// Watches the pods not bound yet ([`UNBOUND_PODS`]); each gated pod gets one task that places it (or waits
/// for leadership to do so), stopped as soon as the pod is no longer gated ([`PodTasks`]).
async fn run(
    context: Arc<Context>,
    pods: Api<Pod>,
    gated: GatedPods,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let shared = context.shared.clone();
    let mut synced = shared.nodes_synced.clone();
    tokio::select! {
        result = synced.wait_for(|synced| *synced) => if result.is_err() { return Ok(()) },
        () = shutdown.cancelled() => return Ok(()),
    }
    let mut events = pin!(
        initial_state_watcher(
            pods,
            watcher::Config::default().fields(UNBOUND_PODS),
            shared.initial_list,
            GATED_PODS_WATCH
        )
        .take_until(shutdown.clone().cancelled_owned())
    );
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut placing = PodTasks::default();
    let mut relisted: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            event = events.next() => match event { Some(e) => e, None => break },
            () = placing.reap() => continue,
        };
        observe_watch(&shared.health, &shared.metrics, GATED_PODS_WATCH, &event);
        let pod = match event {
            Ok(watcher::Event::Init) => {
                relisted = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    gated.retain(&seen);
                    placing.retain(&seen);
                }
                continue;
            }
            // Bound (it leaves the unbound pods' watch) or deleted: nothing left to place.
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                gated.remove(&uid);
                placing.stop(&uid);
                continue;
            }
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Err(_) => continue,
        };
        let uid = pod.uid().unwrap_or_default();
        if !has_gate(&pod) {
            gated.remove(&uid);
            placing.stop(&uid);
            continue;
        }
        if let Some(seen) = relisted.as_mut() {
            seen.insert(uid.clone());
        }
        gated.insert(&uid, created(&pod));
        if placing.contains(&uid) {
            continue;
        }
        let (context, limit) = (context.clone(), limit.clone());
        let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let stop = shutdown.clone();
        let gated_at = gated_at(created(&pod), SystemTime::now());
        placing.spawn(uid.clone(), |gone| async move {
            let permit = tokio::select! {
                permit = limit.acquire() => permit,
                () = gone.cancelled() => return,
            };
            if let Ok(_permit) = permit {
                tokio::select! {
                    () = place(&context, (&namespace, &name, &uid), gated_at, &gone) => {},
                    () = stop.cancelled() => {},
                }
            }
        });
    }
    Ok(())
}

/// When the pod was gated, as well as we can tell: creationTimestamp has whole seconds, so a pod first
/// seen within that second is timed from when the watch delivered it (milliseconds after its creation);
/// one seen later (listed after a restart or a change of leader) from its creationTimestamp.
fn gated_at(created: SystemTime, first_seen: SystemTime) -> SystemTime {
    if first_seen < created + Duration::from_secs(1) {
        first_seen.max(created)
    } else {
        created
    }
}

fn created(pod: &Pod) -> SystemTime {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or_else(SystemTime::now, |t| SystemTime::from(t.0))
}

/// Places one pod: retries until it is released, gone, or no longer gated.
#[tracing::instrument(skip_all, fields(namespace, pod))]
async fn place(
    context: &Context,
    (namespace, name, uid): (&str, &str, &str),
    gated_at: SystemTime,
    gone: &CancellationToken,
) {
    tracing::Span::current()
        .record("namespace", namespace)
        .record("pod", name);
    let shared = &context.shared;
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), namespace);
    let mut retry = FIRST_RETRY;
    let mut conflicts = 0;
    loop {
        // No longer gated (placed and bound, deleted, ungated): end here, at a wait, never mid-write.
        if gone.is_cancelled() {
            return;
        }
        if !shared.dry_run && !shared.leadership.is_leader() {
            // Followers wait: whoever leads places the pod.
            let mut leader = shared.leadership.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(1), leader.wait_for(|l| *l)).await;
            continue;
        }
        let pod = match api.get_opt(name).await {
            Ok(Some(pod)) if pod.uid().as_deref() == Some(uid) => pod,
            Ok(_) => return,
            Err(err) => {
                shared
                    .metrics
                    .api_error(CONTROLLER, api_error_category(&err));
                tracing::warn!(error = %err, "cannot read the gated pod");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        let reading = std::time::Instant::now();
        let (images, unread_secrets) = resolve_images(context, &pod).await;
        let (isolation, unread_class) = isolation(shared, &pod).await;
        tracing::debug!(took = ?reading.elapsed(), since_gated = ?SystemTime::now().duration_since(gated_at).unwrap_or_default(), "read the pod's images");
        let gated_for = SystemTime::now()
            .duration_since(created(&pod))
            .unwrap_or_default();
        // The hosts (one entry per Windows node: ~0.6 MiB at 4,500 nodes) live only for the pure decision,
        // never across an await: up to CONCURRENCY pods are placed at once, each waiting on the API server.
        let decision = decide(&Inputs {
            pod: &pod,
            images: &images,
            isolation,
            hosts: &cluster_hosts(shared),
            deadline_passed: gated_for >= context.deadline,
            osbuild_key: shared.keys.osbuild(),
            unread: Unread {
                pull_secrets: &unread_secrets,
                runtime_class: unread_class.as_deref(),
            },
        });
        match decision {
            Decision::NotGated => return,
            Decision::Retry { errors } => {
                let left = context.deadline.saturating_sub(gated_for);
                tracing::info!(?errors, retry_in = ?retry.min(left), "registry or API errors that may pass; retrying until the deadline");
                tokio::time::sleep(retry.min(left).max(Duration::from_millis(50))).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
            Decision::Release(release) => {
                if shared.dry_run {
                    tracing::info!(outcome = release.outcome.label(), note = %release.note, "would release the pod (dry run)");
                    return;
                }
                match apply(shared, &api, &pod, &release, gated_at).await {
                    Applied::Done => return,
                    // The loop's top waits for leadership, then reads the pod again.
                    Applied::NotLeader => {}
                    // Changed since we read it (kube-scheduler marks a new gated pod SchedulingGated right
                    // after its creation): read it again at once; the images are cached by now.
                    Applied::Conflict if conflicts < MAX_CONFLICTS => conflicts += 1,
                    Applied::Invalid(refusal) => {
                        let fallback = decide::release_without_affinity(&pod, &refusal);
                        if matches!(
                            apply(shared, &api, &pod, &fallback, gated_at).await,
                            Applied::Done
                        ) {
                            return;
                        }
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                    Applied::Conflict | Applied::Failed => {
                        conflicts = 0;
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            }
        }
    }
}

async fn apply(
    shared: &Shared,
    api: &Api<Pod>,
    pod: &Pod,
    release: &Release,
    gated_at: SystemTime,
) -> Applied {
    // Leadership is checked at each write (leadership.rs), not only before reading the images: a leader
    // paused meanwhile wakes up past its lease, and must not patch.
    if !shared.may_write() {
        return Applied::NotLeader;
    }
    let name = pod.name_any();
    match api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&release.patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Applied::Done,
        Err(kube::Error::Api(status)) if status.code == 422 && release.values.is_some() => {
            shared.metrics.api_error(CONTROLLER, "invalid");
            tracing::warn!(message = %status.message, "the API server refused the node affinity; releasing without it");
            return Applied::Invalid(status.message.clone());
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            tracing::debug!("the pod changed since it was read; reading it again");
            return Applied::Conflict;
        }
        Err(err) => {
            shared
                .metrics
                .api_error(CONTROLLER, api_error_category(&err));
            tracing::warn!(error = %err, "cannot release the gated pod; retrying");
            return Applied::Failed;
        }
    }
    let metrics = &shared.metrics;
    metrics
        .placements
        .with_label_values(&[release.outcome.label()])
        .inc();
    if let Ok(waited) = SystemTime::now().duration_since(gated_at) {
        metrics.gate_to_placed.observe(waited.as_secs_f64());
    }
    tracing::info!(
        outcome = release.outcome.label(),
        values = ?release.values,
        "released the gated pod: {}",
        release.note
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: pod.namespace(),
        uid: pod.uid(),
        ..Default::default()
    };
    let type_ = if release.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    shared
        .publish(
            CONTROLLER,
            &reference,
            Event {
                type_,
                reason: release.reason.to_owned(),
                note: Some(release.note.clone()),
                action: "Place".to_owned(),
                secondary: None,
            },
            Repeats::Never,
        )
        .await;
    Applied::Done
}

/// Every container and init container image, read with the pod's pull secrets; `imagePullPolicy: Always`
/// reads the registry again. Also the pull secrets that could not be read but may be next time.
async fn resolve_images(context: &Context, pod: &Pod) -> (Vec<ImageResult>, Vec<String>) {
    let (keyring, unread) = pull_secrets::keyring(&context.shared, pod).await;
    let spec = pod.spec.clone().unwrap_or_default();
    let mut seen = HashMap::new();
    for container in spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .chain(spec.containers)
    {
        let Some(image) = container.image.filter(|i| !i.is_empty()) else {
            continue;
        };
        let always = container.image_pull_policy.as_deref() == Some("Always");
        let entry = seen.entry(image).or_insert(false);
        *entry |= always;
    }
    let mut results = Vec::new();
    for (image, always) in seen {
        let freshness = if always {
            Freshness::Refresh
        } else {
            Freshness::Cached
        };
        let credentials = keyring.lookup(&image);
        let result = context
            .shared
            .registry
            .resolve(&image, &credentials, freshness)
            .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.category(),
        };
        context
            .shared
            .metrics
            .image_resolutions
            .with_label_values(&[outcome])
            .inc();
        results.push(ImageResult { image, result });
    }
    results.sort_by(|a, b| a.image.cmp(&b.image));
    (results, unread)
}

/// The Windows nodes of the cluster with a known build.
fn cluster_hosts(shared: &Shared) -> Vec<ClusterHost> {
    shared
        .nodes
        .state()
        .iter()
        .filter_map(|node| {
            let version = windows_version(&**node)?;
            Some(ClusterHost {
                osbuild: osbuild_value(version).ok()?,
                name: node.name_any(),
                version,
            })
        })
        .collect()
}

/// Hyper-V when the pod's RuntimeClass handler is containerd's Hyper-V runtime (`runhcs-wcow-hypervisor`,
/// or any handler naming Hyper-V); process isolation otherwise. When the RuntimeClass cannot be read, process
/// isolation (the narrower set of hosts), and what failed if it may pass: the decision waits for it.
async fn isolation(shared: &Shared, pod: &Pod) -> (Isolation, Option<String>) {
    let Some(class) = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
    else {
        return (Isolation::Process, None);
    };
    let api: Api<RuntimeClass> = Api::all(shared.client.clone());
    match api.get_opt(class).await {
        Ok(Some(rc)) if is_hyperv_handler(&rc.handler) => (Isolation::HyperV, None),
        Ok(_) => (Isolation::Process, None),
        Err(err) => {
            let category = api_error_category(&err);
            shared.metrics.api_error(CONTROLLER, category);
            tracing::warn!(runtime_class = class, error = %err, "cannot read the RuntimeClass");
            let unread = crate::events::may_pass(category).then(|| format!("{class}: {category}"));
            (Isolation::Process, unread)
        }
    }
}

/// containerd's Windows runtime handlers: `runhcs-wcow-process` and `runhcs-wcow-hypervisor` (its Hyper-V
/// sandbox, see containerd's docs/cri/config.md and the Kubernetes Windows docs on RuntimeClass).
pub fn is_hyperv_handler(handler: &str) -> bool {
    let handler = handler.to_ascii_lowercase();
    handler.contains("hypervisor") || handler.contains("hyperv") || handler.contains("hyper-v")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gated_at_is_the_first_sight_within_the_creation_second() {
        let created = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let soon = created + Duration::from_millis(300);
        assert_eq!(gated_at(created, soon), soon);
        let later = created + Duration::from_secs(20);
        assert_eq!(gated_at(created, later), created);
    }

    #[test]
    fn hyperv_handlers() {
        assert!(is_hyperv_handler("runhcs-wcow-hypervisor"));
        assert!(is_hyperv_handler("runhcs-wcow-hypervisor-17763"));
        assert!(!is_hyperv_handler("runhcs-wcow-process"));
        assert!(!is_hyperv_handler("runc"));
    }
}
