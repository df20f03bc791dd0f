//! The node controller against the real kube-apiserver (and kube-scheduler for the scheduling test).
//! Kernel versions are real ones; their sources are in tests/data/kernel_versions.json and DOMAIN.md §1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Controller, EventQuery, TIMEOUT, TestEnv, consistently, eventually};

const OSBUILD: &str = "beta.kubernetes.io/osbuild";
const PREFIX: &str = "osbuild-controller.io";

fn key(name: &str) -> String {
    format!("{PREFIX}/{name}")
}

/// Waits until the node's labels satisfy `check`, and returns them.
async fn wait_labels(
    env: &TestEnv,
    node: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    eventually(&format!("{node}: {what}"), TIMEOUT, || async {
        let labels = env.labels(node).await;
        check(&labels).then_some(labels)
    })
    .await
}

fn ours(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| *k == OSBUILD || k.starts_with(&format!("{PREFIX}/")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Events our controller published about a node (cluster-scoped objects' events go to `default`).
async fn node_events(env: &TestEnv, node: &str) -> Vec<Event> {
    EventQuery::new("default")
        .regarding(node)
        .ours()
        .list(&env.client)
        .await
}

async fn wait_event(env: &TestEnv, node: &str, reason: &str) -> Event {
    eventually(&format!("{reason} event on {node}"), TIMEOUT, || async {
        node_events(env, node)
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

#[tokio::test]
async fn every_kernel_version_format_is_labelled() {
    let env = TestEnv::new("nodes-formats").await;
    // (suffix, kernelVersion, osbuild, release, revision)
    let cases = [
        (
            "dotted",
            "10.0.17763.3887",
            "17763",
            Some("ltsc2019"),
            Some("3887"),
        ),
        (
            "dotted5",
            "10.0.26100.32995",
            "26100",
            Some("ltsc2025"),
            Some("32995"),
        ),
        (
            "docker",
            "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
            "14393.1715",
            Some("ltsc2016"),
            Some("1715"),
        ),
        (
            "enablement",
            "10.0 19042 (19041.1.amd64fre.vb_release.191206-1406)",
            "19042",
            Some("20h2"),
            Some("1"),
        ),
        (
            "buildlab",
            "16299.15.amd64fre.rs3_release.170928-1534",
            "16299",
            Some("1709"),
            Some("15"),
        ),
        ("norev", "10.0.20348", "20348", Some("ltsc2022"), None),
        ("insider", "10.0.17111.1", "17111", None, Some("1")),
    ];
    for (suffix, kernel, ..) in &cases {
        env.create_windows_node(suffix, kernel).await;
    }
    let controller = Controller::start(&env, &[]).await;
    for (suffix, kernel, osbuild, release, revision) in cases {
        let node = env.node_name(suffix);
        let labels = wait_labels(&env, &node, "osbuild label", |l| l.get(OSBUILD).is_some()).await;
        assert_eq!(labels[OSBUILD], osbuild, "{kernel}");
        assert_eq!(
            labels.get(&key("release")).map(String::as_str),
            release,
            "{kernel}"
        );
        assert_eq!(
            labels.get(&key("revision")).map(String::as_str),
            revision,
            "{kernel}"
        );
        assert_eq!(
            labels[&key(&format!("process-isolation-{osbuild}"))],
            "true",
            "{kernel}"
        );
    }
    let ws2025 = env.labels(&env.node_name("dotted5")).await;
    assert_eq!(
        ws2025[&key("process-isolation-20348")],
        "true",
        "a WS2025 host runs WS2022 images"
    );
    assert_eq!(
        controller
            .metric(
                "osbuild_windows_nodes",
                &[("osbuild", "17763"), ("release", "ltsc2019")]
            )
            .await,
        Some(1.0)
    );
    controller
        .wait_metric("osbuild_label_writes_total", &[], cases.len() as f64)
        .await;
    env.cleanup().await;
}

#[tokio::test]
async fn linux_nodes_are_untouched() {
    let env = TestEnv::new("nodes-linux").await;
    let linux = env
        .create_node("linux", "linux", "5.15.0-1049-azure", &[("team", "data")])
        .await;
    let windows = env.create_windows_node("win", "10.0.20348.2700").await;
    let before = env.node(&linux).await;
    let controller = Controller::start(&env, &[]).await;
    wait_labels(&env, &windows, "labelled", |l| l.contains_key(OSBUILD)).await;
    let after = env.node(&linux).await;
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "no write to the Linux node"
    );
    assert!(ours(&after.labels().clone()).is_empty());
    controller
        .wait_metric("osbuild_label_writes_total", &[], 1.0)
        .await;
    env.cleanup().await;
}

#[tokio::test]
async fn in_place_upgrade_relabels() {
    let env = TestEnv::new("nodes-upgrade").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    let _controller = Controller::start(&env, &[]).await;
    wait_labels(&env, &node, "ws2019 labels", |l| {
        l.get(OSBUILD).map(String::as_str) == Some("17763")
    })
    .await;

    env.set_kernel_version(&node, "10.0.20348.2700").await;
    let labels = wait_labels(&env, &node, "ws2022 labels", |l| {
        l.get(OSBUILD).map(String::as_str) == Some("20348")
    })
    .await;
    assert_eq!(labels[&key("release")], "ltsc2022");
    assert_eq!(labels[&key("revision")], "2700");
    assert!(
        !labels.contains_key(&key("process-isolation-17763")),
        "the old build's label is gone: {labels:?}"
    );
    assert_eq!(labels[&key("process-isolation-20348")], "true");
    env.cleanup().await;
}

#[tokio::test]
async fn deleted_label_comes_back() {
    let env = TestEnv::new("nodes-restore").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    let _controller = Controller::start(&env, &[]).await;
    wait_labels(&env, &node, "labelled", |l| l.contains_key(OSBUILD)).await;

    let remove = json!({"metadata": {"labels": {OSBUILD: null, key("release"): null}}});
    env.nodes()
        .patch(&node, &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .unwrap();
    let labels = wait_labels(&env, &node, "labels restored", |l| {
        l.contains_key(OSBUILD) && l.contains_key(&key("release"))
    })
    .await;
    assert_eq!(labels[OSBUILD], "17763");
    env.cleanup().await;
}

#[tokio::test]
async fn opt_out_removes_our_labels_and_nothing_else() {
    let env = TestEnv::new("nodes-optout").await;
    let node = env
        .create_node(
            "win",
            "windows",
            "10.0.17763.3887",
            &[("team", "payments"), ("example.com/tier", "gold")],
        )
        .await;
    let _controller = Controller::start(&env, &[]).await;
    wait_labels(&env, &node, "labelled", |l| l.contains_key(OSBUILD)).await;

    let annotate = json!({"metadata": {"annotations": {key("ignore"): "true"}}});
    env.nodes()
        .patch(&node, &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .unwrap();
    let labels = wait_labels(&env, &node, "our labels removed", |l| ours(l).is_empty()).await;
    assert_eq!(labels["team"], "payments");
    assert_eq!(labels["example.com/tier"], "gold");
    assert_eq!(labels["kubernetes.io/os"], "windows");
    assert_eq!(labels[support::RUN_LABEL], env.prefix);
    env.cleanup().await;
}

#[tokio::test]
async fn node_that_stops_being_windows_loses_our_labels() {
    let env = TestEnv::new("nodes-notwin").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    let _controller = Controller::start(&env, &[]).await;
    wait_labels(&env, &node, "labelled", |l| l.contains_key(OSBUILD)).await;
    // Reimaged as Linux: the kubelet reports a Linux kernel and OS, and relabels the OS.
    env.set_node_status(&node, "linux", "6.8.0-1021-aws").await;
    env.nodes()
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"kubernetes.io/os": "linux"}}})),
        )
        .await
        .unwrap();
    wait_labels(&env, &node, "our labels removed", |l| ours(l).is_empty()).await;
    env.cleanup().await;
}

#[tokio::test]
async fn conflict_is_reported_then_taken_with_force() {
    let env = TestEnv::new("nodes-conflict").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    // Someone labelled the node by hand, with another value, before the controller ran.
    env.nodes()
        .patch(&node, &PatchParams::apply("someone-else"), &Patch::Apply(&json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {OSBUILD: "wrong"}}
        })))
        .await
        .unwrap();

    let controller = Controller::start(&env, &[]).await;
    let event = wait_event(&env, &node, "LabelConflict").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("--force-conflicts")
    );
    eventually("conflict metric", TIMEOUT, || async {
        (controller
            .metric("osbuild_label_conflicts_total", &[])
            .await?
            >= 1.0)
            .then_some(())
    })
    .await;
    controller
        .wait_metric("osbuild_nodes_label_conflict", &[], 1.0)
        .await;
    assert_eq!(env.labels(&node).await[OSBUILD], "wrong", "not forced");
    drop(controller);

    let forced = Controller::start(&env, &["--force-conflicts"]).await;
    wait_labels(&env, &node, "label taken over", |l| {
        l.get(OSBUILD).map(String::as_str) == Some("17763")
    })
    .await;
    eventually("conflict gauge cleared", TIMEOUT, || async {
        (forced.metric("osbuild_nodes_label_conflict", &[]).await? == 0.0).then_some(())
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn unparseable_and_revisionless_nodes_get_warnings_and_no_osbuild() {
    let env = TestEnv::new("nodes-unparseable").await;
    // A kubelet 1.9.1 GetVersion bug reported this on a Windows node (acs-engine#2094).
    let bad = env.create_windows_node("bad", "6.2.09200.192").await;
    // Old kubelets reported no revision (kubernetes/kubernetes#50396); WS2016 needs it.
    let norev = env.create_windows_node("norev", "10.0.14393").await;
    let controller = Controller::start(&env, &[]).await;

    let event = wait_event(&env, &bad, "KernelVersionUnparseable").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("6.2.09200.192")
    );
    let event = wait_event(&env, &norev, "OSBuildRevisionUnknown").await;
    assert!(event.note.as_deref().unwrap_or_default().contains("14393"));

    let labels = wait_labels(&env, &norev, "release label", |l| {
        l.contains_key(&key("release"))
    })
    .await;
    assert!(!labels.contains_key(OSBUILD));
    assert!(ours(&env.labels(&bad).await).is_empty());
    assert_eq!(
        controller
            .metric("osbuild_nodes_unlabelled", &[("reason", "unparseable")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        controller
            .metric(
                "osbuild_nodes_unlabelled",
                &[("reason", "revision_unknown")]
            )
            .await,
        Some(1.0)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn not_reported_node_waits_silently_then_gets_labelled() {
    let env = TestEnv::new("nodes-pending").await;
    let node = env.create_windows_node("win", "").await;
    let controller = Controller::start(&env, &[]).await;
    consistently(
        "no labels and no events while not reported",
        Duration::from_secs(2),
        || async {
            ours(&env.labels(&node).await).is_empty() && node_events(&env, &node).await.is_empty()
        },
    )
    .await;
    env.set_kernel_version(&node, "10.0.20348.2700").await;
    wait_labels(&env, &node, "labelled once reported", |l| {
        l.contains_key(OSBUILD)
    })
    .await;
    drop(controller);
    env.cleanup().await;
}

#[tokio::test]
async fn dry_run_writes_nothing() {
    let env = TestEnv::new("nodes-dryrun").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    let bad = env.create_windows_node("bad", "6.2.09200.192").await;
    let before = env.node(&node).await.resource_version();
    let controller = Controller::start(&env, &["--dry-run"]).await;
    // Positive control: the node was reconciled, and the change it would make is the right one.
    let record = eventually("dry-run logs the change it would make", TIMEOUT, || async {
        controller.log_record("dry run: would apply labels", |r| {
            r["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["node"] == node.as_str()))
        })
    })
    .await;
    let change = record["change"].as_str().unwrap_or_default();
    assert!(change.contains(&format!("+{OSBUILD}=17763")), "{record}");
    assert!(
        controller
            .metric("osbuild_reconcile_duration_seconds_count", &[])
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(env.node(&node).await.resource_version(), before);
    assert!(
        node_events(&env, &bad).await.is_empty(),
        "no events in dry-run"
    );
    assert_eq!(
        controller.metric("osbuild_label_writes_total", &[]).await,
        Some(0.0)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn labels_that_already_hold_cost_no_write() {
    let env = TestEnv::new("nodes-nowrite").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    let first = Controller::start(&env, &[]).await;
    wait_labels(&env, &node, "labelled", |l| l.contains_key(OSBUILD)).await;
    let labelled: Node = env.node(&node).await;
    drop(first);

    // A restarted controller (and heartbeats meanwhile) must not write again.
    let second = Controller::start(&env, &["--resync-interval", "1s"]).await;
    env.set_node_status(&node, "windows", "10.0.17763.3887")
        .await; // a kubelet heartbeat
    let after_heartbeat = env.node(&node).await.resource_version();
    // Positive control: the restarted controller does look at the node (every second), it just has
    // nothing to write.
    eventually(
        "the restarted controller reconciles the node",
        TIMEOUT,
        || async {
            let reconciles = second
                .metric("osbuild_reconcile_duration_seconds_count", &[])
                .await?;
            (reconciles >= 2.0).then_some(())
        },
    )
    .await;
    consistently(
        "no write by the restarted controller",
        Duration::from_secs(3),
        || async { env.node(&node).await.resource_version() == after_heartbeat },
    )
    .await;
    assert_eq!(
        second.metric("osbuild_label_writes_total", &[]).await,
        Some(0.0)
    );
    assert_eq!(ours(&env.labels(&node).await), ours(labelled.labels()));
    env.cleanup().await;
}

#[tokio::test]
async fn pods_schedule_by_osbuild_and_process_isolation_labels() {
    let env = TestEnv::new("nodes-schedule").await;
    let ws2016a = env
        .create_windows_node(
            "ws2016a",
            "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
        )
        .await;
    let _ws2016b = env.create_windows_node("ws2016b", "10.0.14393.1944").await;
    let ws2019 = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let ws2022 = env.create_windows_node("ws2022", "10.0.20348.2700").await;
    let ws2025 = env.create_windows_node("ws2025", "10.0.26100.32995").await;
    let _controller = Controller::start(&env, &[]).await;
    for node in [&ws2016a, &ws2019, &ws2022, &ws2025] {
        wait_labels(&env, node, "labelled", |l| l.contains_key(OSBUILD)).await;
    }

    let pod = |name: &str, selector: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeSelector": selector, "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/servercore:ltsc2022"}]}
        }))
        .unwrap()
    };
    let run = support::RUN_LABEL;
    let pods = env.pods();
    // The seed's example: a WS2016 image at revision 1715 must land on the 1715 host, not the 1944 one.
    pods.create(
        &PostParams::default(),
        &pod("ws2016", json!({OSBUILD: "14393.1715", run: env.prefix})),
    )
    .await
    .unwrap();
    // A WS2022 image selects our process-isolation label; pinning each host by hostname as well shows which
    // hosts the label admits: WS2022 and WS2025 do, WS2019 never.
    for (name, host) in [
        ("on-ws2022", &ws2022),
        ("on-ws2025", &ws2025),
        ("on-ws2019", &ws2019),
    ] {
        let selector = json!({key("process-isolation-20348"): "true", "kubernetes.io/hostname": host, run: env.prefix});
        pods.create(&PostParams::default(), &pod(name, selector))
            .await
            .unwrap();
    }
    let bound = |name: &'static str| {
        let pods = pods.clone();
        async move {
            eventually(&format!("pod {name} bound"), TIMEOUT, || async {
                pods.get(name).await.ok()?.spec?.node_name
            })
            .await
        }
    };
    assert_eq!(bound("ws2016").await, ws2016a);
    assert_eq!(bound("on-ws2022").await, ws2022);
    assert_eq!(bound("on-ws2025").await, ws2025);
    eventually("pod on-ws2019 unschedulable", TIMEOUT, || async {
        let conditions = pods.get("on-ws2019").await.ok()?.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"))
            .then_some(())
    })
    .await;
    assert_eq!(
        pods.get("on-ws2019").await.unwrap().spec.unwrap().node_name,
        None
    );
    env.cleanup().await;
}
