//! What the Node index costs per node, without a cluster: decodes N kubelet-shaped Node JSON documents (the
//! bench's shape: 11 labels, 2 annotations, the kubelet's and our managedFields, 10 images, 5 conditions) into
//! a kube-runtime reflector store, the way the Node watch does, and prints the resident memory it added.
//! One representation per process, so they do not share freed memory (docs/benchmarks.md, "Memory"):
//!
//! ```sh
//! cargo run --release --example index_memory -- indexed 5000   # Store<IndexedNode> (the index today)
//! cargo run --release --example index_memory -- trimmed 5000   # Store<Node> of trimmed Nodes (before)
//! cargo run --release --example index_memory -- full 5000      # Store<Node> untrimmed (for scale)
//! ```
//!
//! Run it under `heaptrack` for where the bytes go.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // a measuring tool, not the product

use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use osbuild_controller::FIELD_MANAGER;
use osbuild_controller::core::labels::LabelKeys;
use osbuild_controller::indexed_node::IndexedNode;
use osbuild_controller::node_info::OS_LABEL;
use serde_json::json;

fn node_json(i: usize) -> String {
    let images: Vec<_> = (0..10)
        .map(|k| json!({"names": [format!("mcr.microsoft.com/windows/servercore@sha256:{:064x}", i * 10 + k), format!("mcr.microsoft.com/windows/servercore:ltsc2022-{k}")], "sizeBytes": 2_000_000_000_u64 + k as u64}))
        .collect();
    let now = "2026-11-23T00:00:00Z";
    let conditions: Vec<_> = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable"]
        .iter()
        .map(|t| json!({"type": t, "status": "False", "reason": format!("Kubelet{t}"), "message": format!("kubelet reports {t}"), "lastHeartbeatTime": now, "lastTransitionTime": now}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": format!("bench-{i:05}"), "uid": format!("6c8f6a5e-2b9e-4a56-9d6f-{i:012x}"), "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": now,
            "labels": {"kubernetes.io/os": "windows", "beta.kubernetes.io/os": "windows", "kubernetes.io/arch": "amd64",
                       "beta.kubernetes.io/arch": "amd64", "kubernetes.io/hostname": format!("bench-{i:05}"),
                       "node.kubernetes.io/instance-type": "Standard_D4s_v5", "topology.kubernetes.io/region": "westeurope",
                       "topology.kubernetes.io/zone": format!("westeurope-{}", i % 3 + 1), "agentpool": "win",
                       "node.kubernetes.io/windows-build": "10.0.20348", "osbuild-bench": "1",
                       "beta.kubernetes.io/osbuild": "20348", "osbuild-controller.io/release": "ltsc2022",
                       "osbuild-controller.io/build": "20348", "osbuild-controller.io/revision": "2700"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "managedFields": [
                {"manager": "bench", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:node.alpha.kubernetes.io/ttl": {}}, "f:labels": {".": {}, "f:agentpool": {}, "f:kubernetes.io/os": {}}}, "f:spec": {"f:podCIDR": {}, "f:providerID": {}}}},
                {"manager": "bench", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:images": {}, "f:nodeInfo": {"f:kernelVersion": {}}}}},
                {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:labels": {"f:beta.kubernetes.io/osbuild": {}, "f:osbuild-controller.io/build": {}, "f:osbuild-controller.io/release": {}, "f:osbuild-controller.io/revision": {}}}}}
            ]
        },
        "spec": {"podCIDR": format!("10.{}.{}.0/24", 100 + i / 256 % 100, i % 256), "providerID": format!("azure:///subscriptions/0000/resourceGroups/bench/providers/Microsoft.Compute/virtualMachineScaleSets/aks-win/virtualMachines/{i}")},
        "status": {
            "capacity": {"cpu": "4", "memory": "16374460Ki", "pods": "110"},
            "allocatable": {"cpu": "3860m", "memory": "12899004Ki", "pods": "110"},
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": format!("10.240.{}.{}", i / 256 % 256, i % 256)}, {"type": "Hostname", "address": format!("bench-{i:05}")}],
            "images": images,
            "nodeInfo": {"kernelVersion": format!("10.0.20348.{}", 2700 + i % 7), "osImage": "Windows Server 2022 Datacenter",
                         "operatingSystem": "windows", "architecture": "amd64", "kubeletVersion": "v1.31.2", "kubeProxyVersion": "v1.31.2",
                         "containerRuntimeVersion": "containerd://1.7.20+azure", "machineID": format!("bench-{i:05}"),
                         "systemUUID": format!("{i:032x}"), "bootID": format!("{i:032x}")}
        }
    })
    .to_string()
}

/// The trim of the index before IndexedNode (git history of src/index.rs), for the comparison.
fn trim_node(node: &mut Node, keys: &LabelKeys) {
    let meta = &mut node.metadata;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == OS_LABEL || keys.is_ours(k));
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        let ignore = keys.ignore_annotation();
        annotations.retain(|k, _| *k == ignore);
    }
    if let Some(fields) = meta.managed_fields.as_mut() {
        fields.retain(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER) && e.operation.as_deref() == Some("Apply")
        });
    }
    meta.owner_references = None;
    meta.finalizers = None;
    node.spec = None;
    let info = node
        .status
        .take()
        .and_then(|s| s.node_info)
        .map(|info| NodeSystemInfo {
            kernel_version: info.kernel_version,
            operating_system: info.operating_system,
            ..Default::default()
        });
    node.status = info.map(|info| NodeStatus {
        node_info: Some(info),
        ..Default::default()
    });
}

fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "indexed".into());
    let n: usize = args.next().map_or(5000, |s| s.parse().unwrap());
    let keys = LabelKeys::default();
    // The documents first, so their memory is in the baseline; decoded one at a time like a watch stream.
    let docs: Vec<String> = (0..n).map(node_json).collect();
    let before = resident_kib();
    let kept = match mode.as_str() {
        "indexed" => {
            let (reader, mut writer) = reflector::store::<IndexedNode>();
            for doc in &docs {
                let node: IndexedNode = serde_json::from_str(doc).unwrap();
                writer.apply_watcher_event(&Event::Apply(node.trim(&keys)));
            }
            reader.state().len()
        }
        "trimmed" | "full" => {
            let (reader, mut writer) = reflector::store::<Node>();
            for doc in &docs {
                let mut node: Node = serde_json::from_str(doc).unwrap();
                if mode == "trimmed" {
                    trim_node(&mut node, &keys);
                }
                writer.apply_watcher_event(&Event::Apply(node));
            }
            reader.state().len()
        }
        other => panic!("mode {other}: indexed, trimmed or full"),
    };
    let added = resident_kib().saturating_sub(before);
    println!(
        "{mode}: {kept} nodes, resident +{added} KiB, {:.2} KiB per node",
        added as f64 / kept as f64
    );
}
