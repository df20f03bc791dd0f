//! The pod OS-mismatch detector against the real kube-apiserver. Pods are bound to test nodes directly
//! (spec.nodeName) and their status is set through the status subresource, as a kubelet would.
//! Messages are real ones from tests/data/error_messages.json, where each carries its source URL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{Controller, EventQuery, TIMEOUT, TestEnv, consistently, eventually, registries};

#[derive(Deserialize)]
struct MessageCase {
    message: String,
    os_mismatch: bool,
    variant: Option<String>,
    source: String,
}

/// The first real message of a variant (or of a look-alike whose text contains `look_alike`).
fn real_message(variant: Option<&str>, look_alike: &str) -> String {
    let cases: Vec<MessageCase> =
        serde_json::from_str(include_str!("data/error_messages.json")).unwrap();
    let case = cases
        .into_iter()
        .find(|c| match variant {
            Some(v) => c.os_mismatch && c.variant.as_deref() == Some(v),
            None => !c.os_mismatch && c.message.contains(look_alike),
        })
        .unwrap_or_else(|| panic!("no real message for {variant:?} / {look_alike:?}"));
    assert!(case.source.starts_with("https://"));
    case.message
}

async fn create_pod(env: &TestEnv, name: &str, node: &str, image: &str, init: bool) -> Pod {
    let mut spec = json!({
        "nodeName": node,
        "containers": [{"name": "app", "image": image}],
    });
    if init {
        spec["initContainers"] = json!([{"name": "setup", "image": image}]);
    }
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    env.pods()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

fn waiting(container: &str, image: &str, reason: &str, message: &str, restarts: i32) -> Value {
    json!({"name": container, "image": image, "imageID": "", "ready": false, "restartCount": restarts,
           "state": {"waiting": {"reason": reason, "message": message}}})
}

fn crash_loop(
    container: &str,
    image: &str,
    last_reason: &str,
    message: &str,
    restarts: i32,
) -> Value {
    json!({"name": container, "image": image, "imageID": "", "ready": false, "restartCount": restarts,
           "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
           "lastState": {"terminated": {"reason": last_reason, "exitCode": 128, "message": message,
                                        "startedAt": "2026-11-23T00:00:00Z", "finishedAt": format!("2026-11-23T00:00:{:02}Z", restarts % 60)}}})
}

fn running(container: &str, image: &str) -> Value {
    json!({"name": container, "image": image, "imageID": "", "ready": true, "restartCount": 5,
           "state": {"running": {"startedAt": "2026-11-23T01:00:00Z"}}})
}

async fn mismatch_events(env: &TestEnv, pod: &str) -> Vec<Event> {
    EventQuery::new(&env.namespace)
        .regarding(pod)
        .reason("OSVersionMismatch")
        .list(&env.client)
        .await
}

async fn wait_flagged(env: &TestEnv, controller: &Controller, pod: &str, container: &str) -> Event {
    let event = eventually(
        &format!("OSVersionMismatch event on {pod}"),
        TIMEOUT,
        || async { mismatch_events(env, pod).await.into_iter().next() },
    )
    .await;
    let gauge = controller
        .metric(
            "osbuild_pod_os_mismatch",
            &[
                ("namespace", &env.namespace),
                ("pod", pod),
                ("container", container),
            ],
        )
        .await;
    assert_eq!(gauge, Some(1.0), "gauge for {pod}/{container}");
    event
}

async fn gauge(controller: &Controller, env: &TestEnv, pod: &str) -> Option<f64> {
    controller
        .metric(
            "osbuild_pod_os_mismatch",
            &[("namespace", &env.namespace), ("pod", pod)],
        )
        .await
}

#[tokio::test]
async fn docker_era_container_cannot_run_is_flagged_with_its_remediation() {
    let env = TestEnv::new("pods-docker").await;
    let node = env
        .create_windows_node(
            "ws2016",
            "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
        )
        .await;
    let controller = Controller::start(&env, &["--annotate-pods"]).await;
    let image = "microsoft/windowsservercore:10.0.14393.1944";
    create_pod(&env, "web", &node, image, false).await;
    let message = real_message(Some("hcs-0xc0370101"), "");
    env.set_pod_status("web", json!({"phase": "Pending", "containerStatuses": [crash_loop("app", image, "ContainerCannotRun", &message, 3)]})).await;

    let event = wait_flagged(&env, &controller, "web", "app").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    for part in [
        "Container \"app\"",
        image,
        &node,
        "osbuild 14393.1715",
        "release ltsc2016",
        "process-isolation-14393.1944",
    ] {
        assert!(note.contains(part), "event note lacks {part:?}: {note}");
    }
    // The annotation is written after the Event: wait for it rather than racing it.
    let annotation = eventually("the os-mismatch annotation on the pod", TIMEOUT, || async {
        let pod = env.pods().get("web").await.ok()?;
        pod.annotations()
            .get("osbuild-controller.io/os-mismatch")
            .cloned()
    })
    .await;
    let findings: Value = serde_json::from_str(&annotation).expect("annotation is JSON");
    assert_eq!(findings[0]["container"], "app");
    assert_eq!(findings[0]["variant"], "hcs-0xc0370101");
    assert_eq!(
        controller
            .metric(
                "osbuild_pod_os_mismatch_detections_total",
                &[("namespace", &env.namespace)]
            )
            .await,
        Some(1.0)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn containerd_run_container_error_and_start_error_are_flagged() {
    let env = TestEnv::new("pods-containerd").await;
    let node = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let controller = Controller::start(&env, &[]).await;
    let image = "mcr.microsoft.com/windows/servercore:ltsc2022";
    let message = real_message(Some("containerd"), "");

    create_pod(&env, "waiting", &node, image, false).await;
    env.set_pod_status(
        "waiting",
        json!({"containerStatuses": [waiting("app", image, "RunContainerError", &message, 0)]}),
    )
    .await;
    let event = wait_flagged(&env, &controller, "waiting", "app").await;
    assert!(
        event
            .note
            .unwrap_or_default()
            .contains("process-isolation-20348")
    );

    create_pod(&env, "laststate", &node, image, false).await;
    env.set_pod_status(
        "laststate",
        json!({"containerStatuses": [crash_loop("app", image, "StartError", &message, 2)]}),
    )
    .await;
    wait_flagged(&env, &controller, "laststate", "app").await;
    env.cleanup().await;
}

#[tokio::test]
async fn hcsshim_init_container_is_flagged() {
    let env = TestEnv::new("pods-init").await;
    let node = env.create_windows_node("ws2022", "10.0.20348.2700").await;
    let controller = Controller::start(&env, &[]).await;
    let image = "mcr.microsoft.com/windows/nanoserver:ltsc2025";
    create_pod(&env, "init", &node, image, true).await;
    let message = real_message(Some("hcsshim"), "");
    env.set_pod_status("init", json!({"initContainerStatuses": [crash_loop("setup", image, "ContainerCannotRun", &message, 1)]})).await;
    let event = wait_flagged(&env, &controller, "init", "setup").await;
    assert!(
        event
            .note
            .unwrap_or_default()
            .contains("newer than the host")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn failed_sandbox_event_is_flagged_and_recovery_clears_it() {
    let env = TestEnv::new("pods-sandbox").await;
    let node = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let controller = Controller::start(&env, &["--annotate-pods"]).await;
    let image = "mcr.microsoft.com/windows/servercore:ltsc2022";
    let pod = create_pod(&env, "sandbox", &node, image, false).await;
    // The kubelet's Event for a sandbox that cannot start; the message is containerd's (DOMAIN.md §4).
    let message = format!(
        "Failed to create pod sandbox: rpc error: code = Unknown desc = {}",
        real_message(Some("containerd"), "")
    );
    let event: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "sandbox.1"},
        "involvedObject": {"kind": "Pod", "name": "sandbox", "namespace": env.namespace, "uid": pod.uid(), "apiVersion": "v1"},
        "reason": "FailedCreatePodSandBox", "message": message, "type": "Warning",
        "source": {"component": "kubelet", "host": node}
    }))
    .unwrap();
    Api::<CoreEvent>::namespaced(env.client.clone(), &env.namespace)
        .create(&PostParams::default(), &event)
        .await
        .unwrap();
    let flagged = wait_flagged(&env, &controller, "sandbox", "(sandbox)").await;
    assert!(
        flagged
            .note
            .unwrap_or_default()
            .starts_with("The pod sandbox")
    );

    // The sandbox comes up (e.g. the pod was fixed in place): the gauge and the annotation go away.
    env.set_pod_status(
        "sandbox",
        json!({"phase": "Running", "containerStatuses": [running("app", image)]}),
    )
    .await;
    eventually("gauge cleared", TIMEOUT, || async {
        gauge(&controller, &env, "sandbox")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    eventually("annotation removed", TIMEOUT, || async {
        let pod = env.pods().get("sandbox").await.ok()?;
        (!pod
            .annotations()
            .contains_key("osbuild-controller.io/os-mismatch"))
        .then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn restarts_do_not_flag_again_and_recovery_clears_the_gauge() {
    let env = TestEnv::new("pods-restarts").await;
    let node = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let controller = Controller::start(&env, &[]).await;
    let image = "mcr.microsoft.com/windows/servercore:ltsc2022";
    let message = real_message(Some("containerd"), "");
    create_pod(&env, "loop", &node, image, false).await;
    for restarts in 1..=4 {
        env.set_pod_status("loop", json!({"containerStatuses": [crash_loop("app", image, "StartError", &message, restarts)]})).await;
        if restarts == 1 {
            wait_flagged(&env, &controller, "loop", "app").await;
        }
    }
    consistently(
        "one event, one detection",
        Duration::from_secs(2),
        || async {
            let events = mismatch_events(&env, "loop").await;
            events.len() == 1 && events[0].series.is_none()
        },
    )
    .await;
    assert_eq!(
        controller
            .metric(
                "osbuild_pod_os_mismatch_detections_total",
                &[("namespace", &env.namespace)]
            )
            .await,
        Some(1.0)
    );
    env.set_pod_status(
        "loop",
        json!({"containerStatuses": [running("app", image)]}),
    )
    .await;
    eventually("gauge cleared", TIMEOUT, || async {
        gauge(&controller, &env, "loop")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // Deleting a flagged pod also removes its series.
    create_pod(&env, "doomed", &node, image, false).await;
    env.set_pod_status(
        "doomed",
        json!({"containerStatuses": [crash_loop("app", image, "StartError", &message, 1)]}),
    )
    .await;
    wait_flagged(&env, &controller, "doomed", "app").await;
    env.pods()
        .delete("doomed", &Default::default())
        .await
        .unwrap();
    eventually("gauge of the deleted pod cleared", TIMEOUT, || async {
        gauge(&controller, &env, "doomed")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn other_crash_loops_and_linux_pods_are_not_flagged() {
    let env = TestEnv::new("pods-negative").await;
    let windows = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let linux = env
        .create_node("linux", "linux", "5.15.0-1049-azure", &[])
        .await;
    let controller = Controller::start(&env, &[]).await;
    let image = "mcr.microsoft.com/windows/servercore:ltsc2019";
    let not_found = real_message(None, "The system cannot find the file specified");
    let cases = [
        (
            "hcs-0x2",
            crash_loop("app", image, "StartError", &not_found, 3),
        ),
        (
            "exit-1",
            crash_loop("app", image, "Error", "exit status 1", 3),
        ),
        ("oom", crash_loop("app", image, "OOMKilled", "", 3)),
    ];
    for (name, status) in &cases {
        create_pod(&env, name, &windows, image, false).await;
        env.set_pod_status(name, json!({"containerStatuses": [status]}))
            .await;
    }
    // A mismatch message on a Linux node is not ours to judge.
    create_pod(&env, "on-linux", &linux, image, false).await;
    let message = real_message(Some("containerd"), "");
    env.set_pod_status(
        "on-linux",
        json!({"containerStatuses": [crash_loop("app", image, "StartError", &message, 3)]}),
    )
    .await;
    // A control pod proves the detector is watching: it must be flagged.
    create_pod(
        &env,
        "control",
        &windows,
        "mcr.microsoft.com/windows/servercore:ltsc2022",
        false,
    )
    .await;
    env.set_pod_status(
        "control",
        json!({"containerStatuses": [crash_loop("app", image, "StartError", &message, 3)]}),
    )
    .await;
    wait_flagged(&env, &controller, "control", "app").await;

    for name in ["hcs-0x2", "exit-1", "oom", "on-linux"] {
        assert!(
            mismatch_events(&env, name).await.is_empty(),
            "{name} was flagged"
        );
        assert_eq!(
            gauge(&controller, &env, name).await,
            None,
            "{name} has a gauge"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn namespace_flag_limits_the_watch() {
    let env = TestEnv::new("pods-namespace").await;
    // The watched namespace: a second test namespace on the same cluster.
    let watched = TestEnv::with_client(env.client.clone(), "pods-namespace-in").await;
    let node = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let controller = Controller::start(&env, &["--namespace", &watched.namespace]).await;
    let image = "mcr.microsoft.com/windows/servercore:ltsc2022";
    let message = real_message(Some("containerd"), "");
    let status =
        json!({"containerStatuses": [crash_loop("app", image, "StartError", &message, 1)]});
    create_pod(&env, "elsewhere", &node, image, false).await;
    env.set_pod_status("elsewhere", status.clone()).await;
    // Positive control: the same failure inside --namespace is flagged.
    create_pod(&watched, "inside", &node, image, false).await;
    watched.set_pod_status("inside", status).await;
    wait_flagged(&watched, &controller, "inside", "app").await;
    consistently(
        "not flagged outside --namespace",
        Duration::from_secs(2),
        || async { mismatch_events(&env, "elsewhere").await.is_empty() },
    )
    .await;
    assert_eq!(gauge(&controller, &env, "elsewhere").await, None);
    watched.cleanup().await;
    env.cleanup().await;
}

/// The mismatch before a container exists (DOMAIN.md §4): Docker's pull error in `ErrImagePull`, then
/// `ImagePullBackOff` (which carries only "Back-off pulling image"): one episode, one Event, the gauge; its
/// own variant in the annotation. Docker's version check is flagged the same way, and the sandbox's pause
/// image failing to pull in a `FailedCreatePodSandBox` Event flags the sandbox. Messages: tests/data.
#[tokio::test]
async fn pull_time_forms_are_flagged_once_per_episode() {
    let env = TestEnv::new("pods-pull").await;
    let node = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let controller = Controller::start(&env, &["--annotate-pods"]).await;
    let image = "mcr.microsoft.com/windows/servercore:ltsc2022";
    let pull_error = real_message(Some("pull-no-matching-manifest"), "");

    create_pod(&env, "pull", &node, image, false).await;
    env.set_pod_status(
        "pull",
        json!({"phase": "Pending", "containerStatuses": [waiting("app", image, "ErrImagePull", &pull_error, 0)]}),
    )
    .await;
    let event = wait_flagged(&env, &controller, "pull", "app").await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("cannot be pulled for node"), "{note}");
    assert!(note.contains("process-isolation-20348"), "{note}");
    let annotation = eventually("the annotation names the variant", TIMEOUT, || async {
        let pod = env.pods().get("pull").await.ok()?;
        pod.annotations()
            .get("osbuild-controller.io/os-mismatch")
            .cloned()
    })
    .await;
    let findings: Value = serde_json::from_str(&annotation).unwrap();
    assert_eq!(findings[0]["variant"], "pull-no-matching-manifest");
    // The kubelet backs off and retries the pull: still the same episode.
    for round in 0..3 {
        let back_off = format!("Back-off pulling image \"{image}\"");
        env.set_pod_status(
            "pull",
            json!({"phase": "Pending", "containerStatuses": [waiting("app", image, "ImagePullBackOff", &back_off, 0)]}),
        )
        .await;
        env.set_pod_status(
            "pull",
            json!({"phase": "Pending", "containerStatuses": [waiting("app", image, "ErrImagePull", &format!("{pull_error} ({round})"), 0)]}),
        )
        .await;
    }
    consistently(
        "one Event and the gauge through the back-off",
        Duration::from_secs(2),
        || async { mismatch_events(&env, "pull").await.len() == 1 },
    )
    .await;
    assert_eq!(gauge(&controller, &env, "pull").await, Some(1.0));
    assert_eq!(
        controller
            .metric(
                "osbuild_pod_os_mismatch_detections_total",
                &[("namespace", &env.namespace)]
            )
            .await,
        Some(1.0)
    );

    // Docker's version check.
    let version_check = real_message(Some("docker-version-check"), "");
    create_pod(&env, "check", &node, image, false).await;
    env.set_pod_status(
        "check",
        json!({"phase": "Pending", "containerStatuses": [waiting("app", image, "ErrImagePull", &version_check, 0)]}),
    )
    .await;
    wait_flagged(&env, &controller, "check", "app").await;

    // The sandbox's pause image cannot be pulled.
    let sandbox = create_pod(&env, "pause", &node, image, false).await;
    let message = format!(
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed pulling image \"mcr.microsoft.com/oss/kubernetes/pause:3.9\": Error response from daemon: {pull_error}"
    );
    let event: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "pause.1"},
        "involvedObject": {"kind": "Pod", "name": "pause", "namespace": env.namespace, "uid": sandbox.uid(), "apiVersion": "v1"},
        "reason": "FailedCreatePodSandBox", "message": message, "type": "Warning",
        "source": {"component": "kubelet", "host": node}
    }))
    .unwrap();
    Api::<CoreEvent>::namespaced(env.client.clone(), &env.namespace)
        .create(&PostParams::default(), &event)
        .await
        .unwrap();
    wait_flagged(&env, &controller, "pause", "(sandbox)").await;

    // The pull works (the pod was moved to a host that runs the image): the episode ends.
    env.set_pod_status(
        "pull",
        json!({"phase": "Running", "containerStatuses": [running("app", image)]}),
    )
    .await;
    eventually("gauge cleared", TIMEOUT, || async {
        gauge(&controller, &env, "pull")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    env.cleanup().await;
}

/// containerd's pull error "no match for platform in manifest: not found" names no OS: the controller reads
/// the image from its (real) registry and flags it only when the image has Windows entries none of which the
/// node runs (an ltsc2019 index on a Windows Server 2022 node); a Linux-only image, or a Windows image the
/// node runs (so something else failed), with the same message is not flagged. Message:
/// tests/data/error_messages.json (containerd/containerd#6989).
#[tokio::test]
async fn containerd_no_match_for_platform_is_flagged_only_for_windows_images_the_node_cannot_run() {
    let env = TestEnv::new("pods-platform").await;
    let node = env.create_windows_node("ws2022", "10.0.20348.2655").await;
    let r = registries();
    let controller = Controller::start(
        &env,
        &["--annotate-pods", "--registry-insecure", r.plain_host()],
    )
    .await;
    let message = real_message(None, "failed to pull and unpack image");
    assert!(message.contains("no match for platform in manifest"));
    let pulling = |image: &str| json!({"phase": "Pending", "containerStatuses": [waiting("app", image, "ErrImagePull", &message, 0)]});
    // Not the mismatch: a Linux-only index, and an ltsc2022 index the node runs.
    let (linux, fits, old) = (
        r.plain("linux/app:latest"),
        r.plain("windows/ltsc2022"),
        r.plain("windows/ltsc2019"),
    );
    for (name, image) in [("linux", &linux), ("fits", &fits)] {
        create_pod(&env, name, &node, image, false).await;
        env.set_pod_status(name, pulling(image)).await;
    }
    // The mismatch: an ltsc2019 index (one 10.0.17763 entry) on a 20348 node. Created last, so once it is
    // flagged the detector has judged the two before it (one watch, in order).
    create_pod(&env, "old", &node, &old, false).await;
    env.set_pod_status("old", pulling(&old)).await;
    let event = wait_flagged(&env, &controller, "old", "app").await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("cannot be pulled for node"), "{note}");
    assert!(note.contains("no match for platform"), "{note}");
    let annotation = eventually("the annotation names the variant", TIMEOUT, || async {
        let pod = env.pods().get("old").await.ok()?;
        pod.annotations()
            .get("osbuild-controller.io/os-mismatch")
            .cloned()
    })
    .await;
    let findings: Value = serde_json::from_str(&annotation).unwrap();
    assert_eq!(findings[0]["variant"], "pull-no-match-for-platform");
    consistently(
        "no Event for the Linux image or the image the node runs",
        Duration::from_secs(2),
        || async {
            mismatch_events(&env, "linux").await.is_empty()
                && mismatch_events(&env, "fits").await.is_empty()
        },
    )
    .await;
    assert_eq!(gauge(&controller, &env, "linux").await, None);
    assert_eq!(gauge(&controller, &env, "fits").await, None);
    // Both images were read from the registry (that is how they were told apart), not skipped.
    let scrape = controller.scrape().await;
    assert!(
        scrape.sum_where("osbuild_registry_request_duration_seconds_count", |_| true) >= 3.0,
        "{}",
        controller.log()
    );
    env.cleanup().await;
}
