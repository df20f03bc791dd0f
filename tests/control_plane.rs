//! Smoke tests of the real control plane itself: what every other integration test relies on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use serde_json::json;
use std::time::Duration;
use support::{TIMEOUT, TestEnv, consistently, eventually};

#[tokio::test]
async fn node_status_set_through_the_status_subresource_reads_back() {
    let env = TestEnv::new("cp-nodeinfo").await;
    // The seed's first node, as its kubelet reported it.
    let kernel = "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)";
    let name = env.create_windows_node("win", kernel).await;
    let node = env.node(&name).await;
    let info = node
        .status
        .and_then(|s| s.node_info)
        .expect("nodeInfo is set");
    assert_eq!(info.kernel_version, kernel);
    assert_eq!(info.operating_system, "windows");
    // The API server really is the version we built.
    let version = env.client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.37.2");
    env.cleanup().await;
}

fn pod_selecting(name: &str, selector: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": selector,
            "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/nanoserver:ltsc2022"}]
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn scheduler_binds_to_the_one_matching_node_and_leaves_others_pending() {
    let env = TestEnv::new("cp-scheduler").await;
    let a = env
        .create_node("a", "windows", "10.0.17763.3887", &[("pool", "a")])
        .await;
    let _b = env
        .create_node("b", "windows", "10.0.20348.1", &[("pool", "b")])
        .await;

    let pods = env.pods();
    pods.create(
        &PostParams::default(),
        &pod_selecting(
            "match",
            json!({"pool": "a", "osbuild-test/run": env.prefix}),
        ),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod_selecting(
            "nomatch",
            json!({"pool": "c", "osbuild-test/run": env.prefix}),
        ),
    )
    .await
    .unwrap();

    let bound_to = eventually("pod 'match' is bound", TIMEOUT, || async {
        pods.get("match").await.ok()?.spec?.node_name
    })
    .await;
    assert_eq!(bound_to, a);

    // The scheduler has had its chance: the unmatched pod stays unbound and says why.
    eventually("pod 'nomatch' is marked unschedulable", TIMEOUT, || async {
        let pod = pods.get("nomatch").await.ok()?;
        let conditions = pod.status?.conditions?;
        conditions
            .iter()
            .any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .then_some(())
    })
    .await;
    consistently(
        "pod 'nomatch' stays pending",
        Duration::from_secs(2),
        || async {
            pods.get("nomatch")
                .await
                .ok()
                .and_then(|p| p.spec?.node_name)
                .is_none()
        },
    )
    .await;
    env.cleanup().await;
}
