//! The controller process: readiness, liveness, loud watch errors, and shutdown, against the real server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use serde_json::json;
use std::time::Duration;
use support::{Controller, TestEnv, eventually};

#[tokio::test]
async fn ready_after_sync_live_and_exits_cleanly_on_sigterm() {
    let env = TestEnv::new("health-basic").await;
    env.create_windows_node("win", "10.0.17763.3887").await;
    let controller = Controller::start(&env, &[]).await;
    let (status, body) = controller.get("/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("[+] watch nodes: ok"), "{body}");
    assert_eq!(controller.get("/healthz").await.0, 200);
    assert_eq!(
        controller
            .metric("osbuild_watch_up", &[("resource", "nodes")])
            .await,
        Some(1.0)
    );
    assert!(
        controller
            .metric("osbuild_process_resident_memory_bytes", &[])
            .await
            .unwrap_or(0.0)
            > 0.0
    );
    let log_path = controller.log_path.clone();
    let status = controller.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let messages: Vec<String> = support::read_log(&log_path)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| r["message"].as_str().map(str::to_owned))
        .collect();
    let signal = messages
        .iter()
        .position(|m| m == "SIGTERM received; shutting down");
    let clean = messages.iter().position(|m| m == "shut down cleanly");
    assert!(
        matches!((signal, clean), (Some(s), Some(c)) if s < c),
        "the signal, then a clean shutdown: {messages:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn missing_rbac_is_loud_counted_and_not_ready_until_granted() {
    let env = TestEnv::new("health-rbac").await;
    let kubeconfig = env.service_account_kubeconfig("no-rights").await;
    let controller = Controller::spawn_with_kubeconfig(&env, &kubeconfig, &[]);

    let body = eventually(
        "readyz says the watch is forbidden",
        Duration::from_secs(30),
        || async {
            let (status, body) = support::http_get(&controller.metrics_addr, "/readyz")
                .await
                .ok()?;
            (status == 503 && body.contains("forbidden")).then_some(body)
        },
    )
    .await;
    assert!(body.contains("[-] watch nodes: failing"), "{body}");
    assert!(
        controller
            .metric("osbuild_watch_errors_total", &[("resource", "nodes")])
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        controller
            .log_record(
                "watch failed; retrying with backoff (check RBAC and API server reachability)",
                |r| r["level"] == "ERROR" && r["watch"] == "nodes" && r["category"] == "forbidden"
            )
            .is_some(),
        "an error record naming the watch and the category; log:\n{}",
        controller.log()
    );
    assert_eq!(
        controller
            .metric(
                "osbuild_watch_errors_total",
                &[("resource", "nodes"), ("category", "forbidden")]
            )
            .await
            .map(|v| v >= 1.0),
        Some(true)
    );
    assert_eq!(
        controller.get("/healthz").await.0,
        200,
        "alive: the loop keeps retrying"
    );

    // Granting the read permissions of both watchers makes it ready without a restart.
    let role_name = env
        .grant("nodes", "no-rights", json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch"]}
        ]))
        .await;
    controller.wait_ready_within(Duration::from_secs(90)).await;
    env.revoke(&role_name).await;
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_before_the_node_watch_synced_still_exits_promptly() {
    let env = TestEnv::new("health-early-term").await;
    let kubeconfig = env.service_account_kubeconfig("no-rights").await;
    let controller = Controller::spawn_with_kubeconfig(&env, &kubeconfig, &[]);
    eventually(
        "the watch has failed at least once",
        Duration::from_secs(30),
        || async {
            let (status, body) = support::http_get(&controller.metrics_addr, "/readyz")
                .await
                .ok()?;
            (status == 503 && body.contains("forbidden")).then_some(())
        },
    )
    .await;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(controller.terminate());
    });
    // The kubelet waits terminationGracePeriodSeconds (30 s by default) before SIGKILL.
    let status = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the controller ignored SIGTERM while its Node watch had never synced");
    assert!(status.success(), "{status:?}");
    env.cleanup().await;
}
