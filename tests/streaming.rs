//! How the watches get their initial state, against real kube-apiservers of the tests' own: streamed with
//! `sendInitialEvents` where the server offers it (no list request at all), and paged lists where the
//! server refuses (kube-apiserver with `--feature-gates=WatchList=false` answers the streaming watch with
//! 422 "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use support::faults::unconverged;
use support::{ControlPlane, Controller, TestEnv, apiserver_metric};

/// Real kernelVersions of three formats (tests/data/kernel_versions.json).
const KERNELS: [&str; 3] = [
    "10.0.17763.3887",
    "10.0.20348.2700",
    "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
];

async fn setup(env: &TestEnv) {
    for (i, kernel) in KERNELS.iter().enumerate() {
        env.create_windows_node(&format!("win{i}"), kernel).await;
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": "mcr.microsoft.com/windows/servercore:ltsc2022"}],
                 "nodeName": env.node_name("win0")}
    }))
    .unwrap();
    Api::<Pod>::namespaced(env.client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// Requests of `verb` on nodes and pods so far, by status code class (`2xx`, `422`, ...).
async fn requests(env: &TestEnv, verb: &str, code: &str) -> f64 {
    let mut total = 0.0;
    for resource in ["nodes", "pods"] {
        total += apiserver_metric(
            &env.client,
            "apiserver_request_total",
            &[("verb", verb), ("resource", resource), ("code", code)],
        )
        .await;
    }
    total
}

async fn wait_converged(env: &TestEnv) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = unconverged(env).await;
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "not converged: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lists and refused watches the controller made from its start until ready.
async fn start_and_count(
    env: &TestEnv,
    cp: &ControlPlane,
    flags: &[&str],
) -> (Controller, f64, f64) {
    let lists = requests(env, "LIST", "200").await;
    let refused = requests(env, "WATCH", "422").await;
    let controller = Controller::spawn_with_kubeconfig(env, &cp.kubeconfig, flags);
    controller.wait_ready_within(Duration::from_secs(60)).await;
    let lists = requests(env, "LIST", "200").await - lists;
    let refused = requests(env, "WATCH", "422").await - refused;
    (controller, lists, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_replace_every_list_request() {
    let cp = ControlPlane::up("streaming-on", "", "").await;
    let env = cp.env("streaming-on").await;
    setup(&env).await;

    // Positive control: paged lists show up in the counter this test reads.
    let (paged, lists, _) = start_and_count(&env, &cp, &["--initial-list=paged"]).await;
    wait_converged(&env).await;
    assert!(lists >= 2.0, "paged start made {lists} list requests");
    paged.terminate();

    let (streaming, lists, refused) = start_and_count(&env, &cp, &[]).await;
    assert_eq!(lists, 0.0, "a streaming start makes no list request");
    assert_eq!(refused, 0.0);
    wait_converged(&env).await;
    assert_eq!(
        streaming
            .metric("osbuild_watch_errors_total", &[])
            .await
            .unwrap_or(0.0),
        0.0
    );
    assert!(streaming.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_lists_where_the_server_refuses_to_stream() {
    let cp = ControlPlane::up("streaming-off", "--feature-gates=WatchList=false", "").await;
    let env = cp.env("streaming-off").await;
    setup(&env).await;

    let (controller, lists, refused) = start_and_count(&env, &cp, &[]).await;
    assert!(
        refused >= 2.0,
        "the server refused the streaming watches of nodes and pods ({refused})"
    );
    assert!(lists >= 2.0, "then the controller listed ({lists})");
    wait_converged(&env).await;
    assert_eq!(
        controller
            .metric("osbuild_watch_errors_total", &[])
            .await
            .unwrap_or(0.0),
        0.0,
        "the refusal is not an outage"
    );
    assert_eq!(
        controller
            .metric("osbuild_watch_up", &[("resource", "nodes")])
            .await,
        Some(1.0)
    );
    assert!(controller.terminate().success());
}
