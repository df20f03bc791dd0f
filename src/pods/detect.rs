//! Finds the OS-version mismatch in a Pod's status or in a sandbox Event (DOMAIN.md §4). Pure: no I/O.
//!
//! Shapes, all classified by the core classifier:
//! - Docker era: `lastState.terminated` reason `ContainerCannotRun` with the 0xc0370101 message, then
//!   `waiting: CrashLoopBackOff`;
//! - containerd: `waiting: RunContainerError` or `lastState.terminated` reason `StartError`, then
//!   `CrashLoopBackOff`;
//! - init containers as well as containers;
//! - the pod sandbox: a `FailedCreatePodSandBox` Event on the Pod (the pod stays in ContainerCreating).

use k8s_openapi::api::core::v1::{ContainerStatus, Event as CoreEvent, Pod};
use k8s_openapi::jiff::Timestamp;

use crate::core::mismatch::{Variant, classify};

/// The `container` of a sandbox finding: container names are DNS labels, so this can never clash.
pub const SANDBOX: &str = "(sandbox)";

/// The Event reason the kubelet gives a failed sandbox.
pub const SANDBOX_EVENT_REASON: &str = "FailedCreatePodSandBox";

/// A container (or the sandbox) currently failing with the mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub container: String,
    pub image: String,
    pub variant: Variant,
    /// When the failure became visible ([`visible_since`], or the sandbox Event's time); `None` when the
    /// status carries no time for it.
    pub visible_since: Option<Timestamp>,
}

/// Every container of the pod whose current failure is the mismatch. A container that runs again has
/// recovered, even while `lastState` still shows the old failure.
pub fn active_failures(pod: &Pod) -> Vec<Failure> {
    active_failures_confirmed(pod, &[])
}

/// [`active_failures`], and also the containers in `confirmed` whose pull fails with containerd's ambiguous
/// "no match for platform in manifest": the driver read their images and found Windows entries none of
/// which the node runs ([`super::ambiguous`]).
pub fn active_failures_confirmed(pod: &Pod, confirmed: &[String]) -> Vec<Failure> {
    container_statuses(pod)
        .filter_map(|cs| {
            let variant = failure_of(cs).or_else(|| {
                (confirmed.contains(&cs.name) && super::ambiguous::pull_is_ambiguous(cs))
                    .then_some(Variant::PullNoMatchForPlatform)
            });
            variant.map(|variant| (cs, variant))
        })
        .map(|(cs, variant)| Failure {
            container: cs.name.clone(),
            image: spec_image(pod, &cs.name).unwrap_or_else(|| cs.image.clone()),
            variant,
            visible_since: visible_since(pod, cs),
        })
        .collect()
}

/// When a container's failure became visible in the pod's status: where the detection latency
/// (`osbuild_pod_os_mismatch_detection_latency_seconds`) starts.
/// - The `finishedAt` of the terminated record that carries the mismatch (`state.terminated`, else
///   `lastState.terminated`): the runtime's time of the failed start, which the kubelet writes into the
///   status in the same sync. This is the failure's own time, so it is preferred.
/// - Otherwise the failure is a waiting state (`ErrImagePull`, `RunContainerError`), which carries no time:
///   the `lastTransitionTime` of the pod's `ContainersReady` condition while it is `False`. The containers
///   stopped being ready no later than the failure, so this may start early (by the pull or start attempt
///   that failed), never late: the latency is not understated.
///
/// The API server keeps whole seconds, so a latency measured from either is up to 1 s longer than the real one.
pub fn visible_since(pod: &Pod, cs: &ContainerStatus) -> Option<Timestamp> {
    let terminated = [
        cs.state.as_ref().and_then(|s| s.terminated.as_ref()),
        cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
    ];
    let finished = terminated
        .into_iter()
        .flatten()
        .find(|t| {
            t.message
                .as_deref()
                .is_some_and(|m| classify(m).os_mismatch)
        })
        .and_then(|t| t.finished_at.as_ref());
    finished.map(|t| t.0).or_else(|| not_ready_since(pod))
}

/// Seconds from `since` to `now`: the detection latency. 0 when `since` is later, as it can be: the clocks
/// of the kubelet (which writes the times), the API server and the controller may differ.
pub fn detection_latency(since: Timestamp, now: Timestamp) -> f64 {
    now.duration_since(since).as_secs_f64().max(0.0)
}

fn failure_of(cs: &ContainerStatus) -> Option<Variant> {
    let state = cs.state.as_ref();
    if state.and_then(|s| s.running.as_ref()).is_some() {
        return None;
    }
    let current = [
        state
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.message.as_deref()),
        state
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.as_deref()),
        cs.last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.as_deref()),
    ];
    current
        .into_iter()
        .flatten()
        .find_map(|message| classify(message).variant)
}

/// The kubelet's waiting reasons while an image cannot be pulled. Only `ErrImagePull` carries the runtime's
/// message; `ImagePullBackOff` says "Back-off pulling image", so a pull-time episode lasts through it.
const PULL_WAITING_REASONS: [&str; 2] = ["ErrImagePull", "ImagePullBackOff"];

/// Containers still waiting for their image (pulling failed and is retried): a pull-time episode of
/// theirs is not over, whatever the current message says.
pub fn pulls_failing(pod: &Pod) -> Vec<String> {
    container_statuses(pod)
        .filter(|cs| {
            let reason = cs
                .state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref());
            reason.is_some_and(|r| PULL_WAITING_REASONS.contains(&r))
        })
        .map(|cs| cs.name.clone())
        .collect()
}

/// The image as the user wrote it in the spec (the status may show a resolved digest).
pub fn spec_image(pod: &Pod, container: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == container)
        .and_then(|c| c.image.clone())
}

/// The pod's first container image: what a sandbox failure is reported against.
pub fn main_image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Every container status of the pod, init containers first.
pub fn container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status.iter().flat_map(|status| {
        status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
    })
}

/// When the pod's containers last stopped being ready, as the kubelet recorded it: the `ContainersReady`
/// condition's `lastTransitionTime` while that condition is `False`. A mismatch episode begins there (the
/// container never ran since), so it orders Events against episodes the same way for every replica,
/// including one that starts or re-lists in the middle of an episode. `None` when the status does not say.
pub fn not_ready_since(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ContainersReady" && c.status == "False")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// Whether the pod's sandbox is up: some container runs, or the pod has finished.
pub fn sandbox_recovered(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    let running = container_statuses(pod)
        .any(|cs| cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some());
    running
        || matches!(
            status.phase.as_deref(),
            Some("Running" | "Succeeded" | "Failed")
        )
}

/// The latest time an Event says it was observed: a repeated Event (the recorder's series) moves it on.
pub fn event_last_seen(event: &CoreEvent) -> Option<Timestamp> {
    [
        event.event_time.as_ref().map(|t| t.0),
        event
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0),
        event.last_timestamp.as_ref().map(|t| t.0),
        event.first_timestamp.as_ref().map(|t| t.0),
        event.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max()
}

/// The pod a sandbox Event is about, when it carries the mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFailure {
    pub namespace: String,
    pub pod: String,
    pub uid: Option<String>,
    pub variant: Variant,
    /// When the kubelet recorded this occurrence ([`event_last_seen`]): where the detection latency starts.
    pub visible_since: Option<Timestamp>,
}

pub fn sandbox_failure(event: &CoreEvent) -> Option<SandboxFailure> {
    if event.reason.as_deref() != Some(SANDBOX_EVENT_REASON) {
        return None;
    }
    let object = &event.involved_object;
    if object.kind.as_deref() != Some("Pod") {
        return None;
    }
    let variant = classify(event.message.as_deref()?).variant?;
    Some(SandboxFailure {
        namespace: object.namespace.clone()?,
        pod: object.name.clone()?,
        uid: object.uid.clone(),
        variant,
        // The latest occurrence: a repeated Event keeps its first one's time, maybe an earlier episode's.
        visible_since: event_last_seen(event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // DOMAIN.md §4 and the seed's `kubectl describe` output.
    const DOCKER: &str = "container 5b41 encountered an error during CreateContainer: failure in a Windows system call: The operating system of the container does not match the operating system of the host. (0xc0370101)";
    const CONTAINERD: &str = "failed to create containerd task: failed to create shim task: hcs::CreateComputeSystem app: The container operating system does not match the host operating system.: unknown";

    #[allow(clippy::needless_pass_by_value)] // called with json! literals
    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {
                "initContainers": [{"name": "init", "image": "example/init:ltsc2019"}],
                "containers": [{"name": "app", "image": "example/app:ltsc2022"}]
            },
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn docker_era_crash_loop() {
        let p = pod(json!({"containerStatuses": [{
            "name": "app", "image": "sha256:abc", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"reason": "ContainerCannotRun", "exitCode": 128, "message": DOCKER}}
        }]}));
        let failures = active_failures(&p);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].container, "app");
        assert_eq!(
            failures[0].image, "example/app:ltsc2022",
            "the spec's image, not the status digest"
        );
        assert_eq!(failures[0].variant, Variant::Hcs0xc0370101);
    }

    #[test]
    fn containerd_run_container_error_on_an_init_container() {
        let p = pod(json!({"initContainerStatuses": [{
            "name": "init", "image": "example/init:ltsc2019", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "RunContainerError", "message": CONTAINERD}}
        }]}));
        let failures = active_failures(&p);
        assert_eq!(failures.len(), 1);
        assert_eq!(
            (failures[0].container.as_str(), failures[0].variant),
            ("init", Variant::Containerd)
        );
    }

    #[test]
    fn running_again_is_recovered_even_with_the_old_last_state() {
        let p = pod(json!({"containerStatuses": [{
            "name": "app", "image": "x", "imageID": "", "ready": true, "restartCount": 4,
            "state": {"running": {"startedAt": "2026-11-23T00:00:00Z"}},
            "lastState": {"terminated": {"reason": "StartError", "exitCode": 128, "message": CONTAINERD}}
        }]}));
        assert!(active_failures(&p).is_empty());
        assert!(sandbox_recovered(&p));
    }

    #[test]
    fn other_crash_loops_are_not_failures() {
        for (reason, message, code) in [
            ("Error", "exit status 1", 1),
            ("OOMKilled", "", 137),
            (
                "StartError",
                "hcs::CreateComputeSystem app: The system cannot find the file specified. (0x2)",
                128,
            ),
        ] {
            let p = pod(json!({"containerStatuses": [{
                "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"reason": reason, "exitCode": code, "message": message}}
            }]}));
            assert!(active_failures(&p).is_empty(), "{reason}");
        }
    }

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().unwrap()
    }

    #[test]
    fn a_crash_loop_is_visible_from_the_failed_start_s_finished_at() {
        let p = pod(json!({
            // An older transition: the failure's own time wins over it.
            "conditions": [{"type": "ContainersReady", "status": "False", "lastTransitionTime": "2026-11-23T00:00:00Z"}],
            "containerStatuses": [{
                "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                "lastState": {"terminated": {"reason": "ContainerCannotRun", "exitCode": 128, "message": DOCKER,
                                             "startedAt": "2026-11-23T00:10:00Z", "finishedAt": "2026-11-23T00:10:03Z"}}
            }]
        }));
        let failures = active_failures(&p);
        assert_eq!(failures[0].visible_since, Some(at("2026-11-23T00:10:03Z")));
        // The same failure while the container is still terminated (before the back-off).
        let p = pod(json!({"containerStatuses": [{
            "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"reason": "StartError", "exitCode": 128, "message": CONTAINERD,
                                     "finishedAt": "2026-11-23T00:20:01Z"}}
        }]}));
        assert_eq!(
            active_failures(&p)[0].visible_since,
            Some(at("2026-11-23T00:20:01Z"))
        );
    }

    /// Docker's pull error (DOMAIN.md §4; https://github.com/docker-archive-public/docker.kitematic/issues/5236)
    /// and containerd's RunContainerError: waiting states have no time, the ContainersReady condition has.
    #[test]
    fn a_waiting_failure_is_visible_from_containers_ready_going_false() {
        let pull = "rpc error: code = Unknown desc = Error response from daemon: no matching manifest for windows/amd64 10.0.17763 in the manifest list entries";
        let status = |conditions: serde_json::Value| {
            pod(
                json!({"phase": "Pending", "conditions": conditions, "containerStatuses": [{
                    "name": "app", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": "ErrImagePull", "message": pull}},
                    // An earlier, unrelated termination is not where this failure starts.
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": "2026-11-22T00:00:00Z"}}
                }]}),
            )
        };
        let p = status(json!([
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-23T00:00:00Z"},
            {"type": "ContainersReady", "status": "False", "lastTransitionTime": "2026-11-23T00:30:00Z"}
        ]));
        let failures = active_failures(&p);
        assert_eq!(failures[0].variant, Variant::PullNoMatchingManifest);
        assert_eq!(failures[0].visible_since, Some(at("2026-11-23T00:30:00Z")));
        // Containers still ready (a stale condition) or no condition at all: no start time, not timed.
        let stale = status(
            json!([{"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-23T00:30:00Z"}]),
        );
        assert_eq!(active_failures(&stale)[0].visible_since, None);
        assert_eq!(active_failures(&status(json!([])))[0].visible_since, None);
    }

    #[test]
    fn detection_latency_is_never_negative() {
        let since = at("2026-11-23T00:00:03Z");
        assert!((detection_latency(since, at("2026-11-23T00:00:33.5Z")) - 30.5).abs() < 1e-9);
        // A kubelet clock ahead of the controller's.
        assert!(detection_latency(since, at("2026-11-23T00:00:01Z")).abs() < f64::EPSILON);
    }

    #[test]
    fn an_event_is_timed_by_its_latest_occurrence() {
        let event = |times: serde_json::Value| -> CoreEvent {
            let mut e = json!({
                "metadata": {"name": "e", "namespace": "n"},
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "n", "uid": "u1"},
                "reason": SANDBOX_EVENT_REASON, "type": "Warning",
                "message": format!("Failed to create pod sandbox: rpc error: code = Unknown desc = {CONTAINERD}")
            });
            e.as_object_mut()
                .unwrap()
                .extend(times.as_object().unwrap().clone());
            serde_json::from_value(e).unwrap()
        };
        // The legacy recorder, repeated: the first occurrence may be an earlier episode's.
        let legacy = event(
            json!({"count": 4, "firstTimestamp": "2026-11-23T00:00:00Z", "lastTimestamp": "2026-11-23T00:05:00Z"}),
        );
        assert_eq!(
            sandbox_failure(&legacy).unwrap().visible_since,
            Some(at("2026-11-23T00:05:00Z"))
        );
        // events.k8s.io: eventTime, then the series.
        let series = event(json!({"eventTime": "2026-11-23T00:00:00.000000Z",
            "series": {"count": 2, "lastObservedTime": "2026-11-23T00:07:00.000000Z"}}));
        assert_eq!(event_last_seen(&series), Some(at("2026-11-23T00:07:00Z")));
        let first_only = event(json!({"firstTimestamp": "2026-11-23T00:01:00Z"}));
        assert_eq!(
            event_last_seen(&first_only),
            Some(at("2026-11-23T00:01:00Z"))
        );
        assert_eq!(event_last_seen(&event(json!({}))), None);
    }

    #[test]
    fn sandbox_event() {
        let event = |reason: &str, kind: &str, message: &str| -> CoreEvent {
            serde_json::from_value(json!({
                "metadata": {"name": "e", "namespace": "n"},
                "involvedObject": {"kind": kind, "name": "p", "namespace": "n", "uid": "u1"},
                "reason": reason, "message": message, "type": "Warning"
            }))
            .unwrap()
        };
        let message =
            format!("Failed to create pod sandbox: rpc error: code = Unknown desc = {CONTAINERD}");
        let found = sandbox_failure(&event(SANDBOX_EVENT_REASON, "Pod", &message)).unwrap();
        assert_eq!(
            (found.pod.as_str(), found.uid.as_deref(), found.variant),
            ("p", Some("u1"), Variant::Containerd)
        );
        assert_eq!(sandbox_failure(&event("BackOff", "Pod", &message)), None);
        assert_eq!(
            sandbox_failure(&event(SANDBOX_EVENT_REASON, "Node", &message)),
            None
        );
        let cni = "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox: plugin type=\"win-overlay\" failed (add): error while adding HostComputeEndpoint";
        assert_eq!(
            sandbox_failure(&event(SANDBOX_EVENT_REASON, "Pod", cni)),
            None
        );
    }
}
