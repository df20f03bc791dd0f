//! docs/scheduling.md must work as written: every complete manifest in it is read by the real kubectl,
//! created on the real API server (RuntimeClass admission merges the class's nodeSelector into pods), and
//! kube-scheduler must bind each pod to a host that runs its image, and only to such a host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use osbuild_controller::core::catalog::release_by_name;
use osbuild_controller::core::compat::compat;
use osbuild_controller::core::version::{KernelVersion, WindowsVersion, parse_kernel_version};
use serde_json::{Value, json};
use support::{Controller, RUN_LABEL, TIMEOUT, TestEnv, eventually};

/// The fenced ```yaml blocks that are whole manifests (fragments have no apiVersion).
fn manifests(doc: &str) -> Vec<String> {
    doc.split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block.to_owned()))
        .filter(|block| block.contains("apiVersion:"))
        .collect()
}

/// The Windows build an image's tag names (`...:ltsc2022`, `...:windowsservercore-ltsc2022`).
fn image_build(image: &str) -> u32 {
    let tag = image.rsplit(':').next().unwrap_or_default();
    let release = tag.rsplit('-').next().unwrap_or_default();
    release_by_name(release)
        .unwrap_or_else(|| panic!("no release for image {image}"))
        .build
}

#[tokio::test]
async fn scheduling_recipes_work_as_written() {
    let env = TestEnv::new("docs-scheduling").await;
    let hosts: BTreeMap<String, &str> = [
        ("ws2016", "10.0.14393.1715"),
        ("ws2019", "10.0.17763.3887"),
        ("ws2022", "10.0.20348.2700"),
        ("ws2025", "10.0.26100.32995"),
    ]
    .into_iter()
    .map(|(s, k)| (env.node_name(s), k))
    .collect();
    for (name, kernel) in &hosts {
        env.create_windows_node(
            name.strip_prefix(&format!("{}-", env.prefix)).unwrap(),
            kernel,
        )
        .await;
    }
    let _controller = Controller::start(&env, &[]).await;
    for name in hosts.keys() {
        eventually(&format!("{name} labelled"), TIMEOUT, || async {
            env.labels(name)
                .await
                .contains_key("osbuild-controller.io/build")
                .then_some(())
        })
        .await;
    }

    let doc = include_str!("../docs/scheduling.md");
    let mut objects = Vec::new();
    for manifest in manifests(doc) {
        let out = support::kubectl_with_stdin(
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            &manifest,
        );
        // One JSON document per object, back to back.
        for parsed in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
            objects.push(parsed.expect("kubectl prints JSON"));
        }
    }
    assert!(
        objects.len() >= 6,
        "found only {} manifests in docs/scheduling.md",
        objects.len()
    );

    // Scope everything to this test: prefixed RuntimeClass names, and the run label in every selector so
    // only this test's nodes are candidates. Deployments become their pod template (no controller-manager).
    let classes: Api<RuntimeClass> = Api::all(env.client.clone());
    let mut class_names = Vec::new();
    let mut pods: Vec<(String, String, bool)> = Vec::new(); // (pod, image, hyper-v)
    let mut hyperv_classes = Vec::new();
    for mut object in objects {
        match object["kind"].as_str().unwrap_or_default() {
            "RuntimeClass" => {
                let name = format!(
                    "{}-{}",
                    env.prefix,
                    object["metadata"]["name"].as_str().unwrap()
                );
                object["metadata"]["name"] = json!(name);
                object["scheduling"]["nodeSelector"][RUN_LABEL] = json!(env.prefix);
                if object["handler"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("hypervisor")
                {
                    hyperv_classes.push(name.clone());
                }
                let class: RuntimeClass = serde_json::from_value(object).unwrap();
                classes
                    .create(&PostParams::default(), &class)
                    .await
                    .expect("create RuntimeClass");
                class_names.push(name);
            }
            kind @ ("Pod" | "Deployment") => {
                let mut pod = if kind == "Pod" {
                    object
                } else {
                    let template = object["spec"]["template"].clone();
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": object["metadata"]["name"]}, "spec": template["spec"]})
                };
                // kubectl fills in its context's namespace; the test's own namespace applies instead.
                if let Some(meta) = pod["metadata"].as_object_mut() {
                    meta.remove("namespace");
                }
                let spec = &mut pod["spec"];
                if let Some(class) = spec["runtimeClassName"].as_str().map(str::to_owned) {
                    spec["runtimeClassName"] = json!(format!("{}-{class}", env.prefix));
                }
                spec["nodeSelector"][RUN_LABEL] = json!(env.prefix);
                let image = spec["containers"][0]["image"].as_str().unwrap().to_owned();
                let hyperv = spec["runtimeClassName"]
                    .as_str()
                    .is_some_and(|c| c.contains("hyperv"));
                let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
                pods.push((name, image, hyperv));
                let pod: Pod = serde_json::from_value(pod).unwrap();
                env.pods()
                    .create(&PostParams::default(), &pod)
                    .await
                    .expect("create pod");
            }
            other => {
                panic!("docs/scheduling.md has a {other} this test does not know how to check")
            }
        }
    }
    assert!(!hyperv_classes.is_empty() && pods.len() >= 3);

    for (pod, image, hyperv) in &pods {
        let node = eventually(&format!("pod {pod} bound"), TIMEOUT, || async {
            env.pods().get(pod).await.ok()?.spec?.node_name
        })
        .await;
        let Ok(KernelVersion::Windows(host)) = parse_kernel_version(hosts[&node]) else {
            panic!("{node} is not one of the test hosts")
        };
        let answer = compat(host.version, WindowsVersion::new(image_build(image), None));
        let runs = if *hyperv {
            answer.hyperv_isolation
        } else {
            answer.process_isolation
        };
        assert!(
            runs,
            "pod {pod} ({image}) was bound to {node} ({}), which cannot run it: {}",
            hosts[&node], answer.reason
        );
    }
    // Spot-check that selectors also exclude: pin a WS2022 RuntimeClass pod to the WS2019 host.
    let pinned: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pinned-ws2019"},
        "spec": {
            "runtimeClassName": format!("{}-windows-ltsc2022", env.prefix),
            "nodeSelector": {"kubernetes.io/hostname": env.node_name("ws2019")},
            "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/nanoserver:ltsc2022"}]
        }
    }))
    .unwrap();
    env.pods()
        .create(&PostParams::default(), &pinned)
        .await
        .unwrap();
    eventually(
        "a WS2022 pod pinned to WS2019 is unschedulable",
        TIMEOUT,
        || async {
            let conditions = env
                .pods()
                .get("pinned-ws2019")
                .await
                .ok()?
                .status?
                .conditions?;
            conditions
                .iter()
                .any(|c| c.reason.as_deref() == Some("Unschedulable"))
                .then_some(())
        },
    )
    .await;
    for name in class_names {
        let _ = classes.delete(&name, &DeleteParams::default()).await;
    }
    env.cleanup().await;
}
