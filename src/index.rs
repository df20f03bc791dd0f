//! The one Node watch of the process: a reflector store of trimmed Nodes (the index every loop reads) and
//! the stream of changed Nodes that drives the node controller.
//!
//! Nodes are large (images, conditions, managedFields of every manager) and heartbeat every few seconds. We
//! keep only what we read, and pass on only changes of our inputs, so memory stays small and heartbeats
//! cost no reconcile.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::FIELD_MANAGER;
use crate::core::labels::LabelKeys;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::node_info::{OS_LABEL, is_opted_out, kernel_version};
use crate::ownership::applied_label_keys;
use crate::supervisor::Supervisor;
use crate::watches::{LIST_PAGE_SIZE, observe_watch, probe_failing_watch};

/// The name of the Node watch in readiness reports and metrics.
pub const NODE_WATCH: &str = "nodes";

/// Keeps what the controllers read: name, uid, resourceVersion, the OS label and our labels, our ignore
/// annotation, our own managedFields entry, and nodeInfo's kernelVersion and operatingSystem.
pub fn trim_node(node: &mut Node, keys: &LabelKeys) {
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

/// A hash of everything the node controller's decision depends on; heartbeats leave it unchanged.
pub fn node_inputs_hash(node: &Node, keys: &LabelKeys) -> u64 {
    let mut h = DefaultHasher::new();
    kernel_version(node).hash(&mut h);
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    info.map(|i| i.operating_system.as_str()).hash(&mut h);
    let ours: BTreeMap<&String, &String> = node
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| *k == OS_LABEL || keys.is_ours(k))
        .collect();
    ours.hash(&mut h);
    is_opted_out(node, keys).hash(&mut h);
    applied_label_keys(
        node.metadata.managed_fields.as_deref().unwrap_or_default(),
        FIELD_MANAGER,
    )
    .hash(&mut h);
    h.finish()
}

/// Becomes `true` once the Node watch has listed every node. (Not `Store::wait_until_ready`: in kube-runtime
/// 5.0 it wakes only the last of several concurrent waiters, and the controller is already one.)
pub type NodesSynced = tokio::sync::watch::Receiver<bool>;

/// Starts the one Node watch (only nodes matching `selector`, if given) and the probe that notices when a
/// failing watch works again; see [`watch_nodes`].
pub fn start(
    client: &kube::Client,
    selector: Option<&str>,
    keys: &LabelKeys,
    health: &Arc<Health>,
    metrics: &Metrics,
    tasks: &mut Supervisor,
) -> (
    (Store<Node>, NodesSynced),
    impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static,
) {
    let mut config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let mut probe = kube::api::ListParams::default();
    if let Some(selector) = selector {
        config = config.labels(selector);
        probe = probe.labels(selector);
    }
    tasks.spawn(
        "nodes-watch-probe",
        probe_failing_watch(
            Api::<Node>::all(client.clone()),
            probe,
            NODE_WATCH,
            health.clone(),
            metrics.clone(),
            tasks.shutdown(),
        ),
    );
    let (store, synced, changed) = watch_nodes(
        Api::all(client.clone()),
        config,
        keys.clone(),
        health.clone(),
        metrics.clone(),
    );
    ((store, synced), changed)
}

/// Starts the Node watch: returns the store, a signal that it has synced, and the stream of Nodes whose
/// inputs changed. Watch errors are logged, counted and shown in readiness, then retried with backoff; they
/// still flow on to the controller so nothing is silently dropped.
pub fn watch_nodes(
    api: Api<Node>,
    config: watcher::Config,
    keys: LabelKeys,
    health: Arc<Health>,
    metrics: Metrics,
) -> (
    Store<Node>,
    NodesSynced,
    impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static,
) {
    health.register_watch(NODE_WATCH);
    let (reader, writer) = reflector::store();
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let trim_keys = keys.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .map(move |event| {
            observe_watch(&health, &metrics, NODE_WATCH, &event);
            if let Ok(watcher::Event::InitDone) = event {
                synced_tx.send_replace(true);
            }
            event
        })
        .modify(move |node| trim_node(node, &trim_keys))
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            move |node: &Node| Some(node_inputs_hash(node, &keys)),
            // Evicting a cached hash only costs one extra reconcile, so the default TTL (1h) is fine.
            kube::runtime::PredicateConfig::default(),
        );
    (reader, synced_rx, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerImage, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn full_node() -> Node {
        let mut node = Node::default();
        node.metadata.name = Some("win-1".into());
        node.metadata.labels = Some(
            [
                ("kubernetes.io/os", "windows"),
                ("beta.kubernetes.io/osbuild", "17763"),
                ("team", "payments"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        );
        node.metadata.annotations = Some(
            [("osbuild-controller.io/ignore", "true"), ("big", "x")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        );
        node.metadata.managed_fields = Some(vec![
            ManagedFieldsEntry {
                manager: Some("kubelet".into()),
                operation: Some("Update".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:status": {}}))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("osbuild-controller".into()),
                operation: Some("Apply".into()),
                ..Default::default()
            },
        ]);
        node.spec = Some(NodeSpec {
            pod_cidr: Some("10.0.0.0/24".into()),
            ..Default::default()
        });
        node.status = Some(NodeStatus {
            images: Some(vec![ContainerImage::default(); 50]),
            node_info: Some(NodeSystemInfo {
                kernel_version: "10.0.17763.3887".into(),
                operating_system: "windows".into(),
                os_image: "Windows Server 2019 Datacenter".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        node
    }

    #[test]
    fn trim_keeps_only_what_we_read() {
        let keys = LabelKeys::default();
        let mut node = full_node();
        trim_node(&mut node, &keys);
        let labels = node.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 2);
        assert!(!labels.contains_key("team"));
        assert_eq!(node.metadata.annotations.as_ref().unwrap().len(), 1);
        assert_eq!(node.metadata.managed_fields.as_ref().unwrap().len(), 1);
        assert!(node.spec.is_none());
        let status = node.status.as_ref().unwrap();
        assert!(status.images.is_none());
        let info = status.node_info.as_ref().unwrap();
        assert_eq!(info.kernel_version, "10.0.17763.3887");
        assert_eq!(info.os_image, "");
    }

    #[test]
    fn inputs_hash_ignores_heartbeat_fields_but_not_inputs() {
        let keys = LabelKeys::default();
        let base = node_inputs_hash(&full_node(), &keys);
        let mut heartbeat = full_node();
        heartbeat.metadata.resource_version = Some("999".into());
        heartbeat
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "other".into());
        assert_eq!(node_inputs_hash(&heartbeat, &keys), base);

        let mut upgraded = full_node();
        upgraded
            .status
            .as_mut()
            .unwrap()
            .node_info
            .as_mut()
            .unwrap()
            .kernel_version = "10.0.20348.1".into();
        assert_ne!(node_inputs_hash(&upgraded, &keys), base);

        let mut deleted_label = full_node();
        deleted_label
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("beta.kubernetes.io/osbuild");
        assert_ne!(node_inputs_hash(&deleted_label, &keys), base);

        let mut opted_in = full_node();
        opted_in.metadata.annotations = None;
        assert_ne!(node_inputs_hash(&opted_in, &keys), base);
    }
}
