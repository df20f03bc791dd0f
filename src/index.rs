//! The one Node watch of the process: a reflector store of trimmed Nodes (the index every loop reads; re-lists
//! update it in place: [`crate::index_writer`]) and the stream of changed Nodes that drives the node
//! controller.
//!
//! Nodes are large (images, conditions, managedFields of every manager) and heartbeat every few seconds. We
//! decode and keep only what we read ([`IndexedNode`]), and pass on only changes of our inputs, so memory
//! stays small and heartbeats cost no reconcile.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::core::labels::LabelKeys;
use crate::health::Health;
use crate::index_writer::IndexWriter;
use crate::indexed_node::IndexedNode;
use crate::metrics::Metrics;
use crate::node_info::{NodeInputs, OS_LABEL};
use crate::supervisor::Supervisor;
use crate::watches::{InitialList, initial_state_watcher, observe_watch, probe_failing_watch};

/// The name of the Node watch in readiness reports and metrics.
pub const NODE_WATCH: &str = "nodes";

/// A hash of everything the node controller's decision depends on; heartbeats leave it unchanged.
pub fn node_inputs_hash(node: &IndexedNode, keys: &LabelKeys) -> u64 {
    let mut h = DefaultHasher::new();
    node.kernel_version().hash(&mut h);
    node.operating_system().hash(&mut h);
    for (k, v) in node.label_pairs() {
        if k == OS_LABEL || keys.is_ours(k) {
            (k, v).hash(&mut h);
        }
    }
    node.is_opted_out(keys).hash(&mut h);
    node.applied_label_keys().hash(&mut h);
    h.finish()
}

/// Becomes `true` once the Node watch has listed every node, and is sent again (a change to receivers) each
/// time a re-list completes, after the store took it in. (Not `Store::wait_until_ready`: in kube-runtime 5.0
/// it wakes only the last of several concurrent waiters.)
pub type NodesSynced = tokio::sync::watch::Receiver<bool>;

/// Starts the one Node watch (only nodes matching `selector`, if given) and the probe that notices when a
/// failing watch works again; see [`watch_nodes`].
pub fn start(
    client: &kube::Client,
    selector: Option<&str>,
    strategy: InitialList,
    keys: &LabelKeys,
    health: &Arc<Health>,
    metrics: &Metrics,
    tasks: &mut Supervisor,
) -> (
    (Store<IndexedNode>, NodesSynced),
    impl Stream<Item = Result<IndexedNode, watcher::Error>> + Send + 'static,
) {
    let mut config = watcher::Config::default();
    let mut probe = kube::api::ListParams::default();
    if let Some(selector) = selector {
        config = config.labels(selector);
        probe = probe.labels(selector);
    }
    tasks.spawn(
        "nodes-watch-probe",
        probe_failing_watch(
            Api::<IndexedNode>::all(client.clone()),
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
        strategy,
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
    api: Api<IndexedNode>,
    config: watcher::Config,
    strategy: InitialList,
    keys: LabelKeys,
    health: Arc<Health>,
    metrics: Metrics,
) -> (
    Store<IndexedNode>,
    NodesSynced,
    impl Stream<Item = Result<IndexedNode, watcher::Error>> + Send + 'static,
) {
    health.register_watch(NODE_WATCH);
    let (reader, writer) = reflector::store();
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let trim_keys = keys.clone();
    let stream = initial_state_watcher(api, config, strategy, NODE_WATCH)
        .map(move |event| {
            observe_watch(&health, &metrics, NODE_WATCH, &event);
            event
        })
        .modify(move |node| *node = std::mem::take(node).trim(&trim_keys))
        .map({
            let mut index = IndexWriter::new(writer);
            move |event| event.map(|event| index.take(event))
        })
        // After the store has taken the whole list in: whoever wakes on the signal reads the listed state.
        // Sent at every (re-)list, not only the first (the node loop sweeps the index then).
        .map(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                synced_tx.send_replace(true);
            }
            event
        })
        .applied_objects()
        .predicate_filter(
            move |node: &IndexedNode| Some(node_inputs_hash(node, &keys)),
            // Evicting a cached hash only costs one extra reconcile, so the default TTL (1h) is fine.
            kube::runtime::PredicateConfig::default(),
        );
    (reader, synced_rx, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerImage, Node, NodeSpec, NodeStatus, NodeSystemInfo};
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
                fields_v1: Some(FieldsV1(serde_json::json!({
                    "f:metadata": {"f:labels": {".": {}, "f:beta.kubernetes.io/osbuild": {}}}
                }))),
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

    /// Decoded from the API server's JSON, as the watch does.
    fn indexed(node: &Node) -> IndexedNode {
        serde_json::from_value::<IndexedNode>(serde_json::to_value(node).unwrap())
            .unwrap()
            .trim(&LabelKeys::default())
    }

    #[test]
    fn the_index_keeps_only_what_we_read() {
        let keys = LabelKeys::default();
        let node = indexed(&full_node());
        let labels = node.labels();
        assert_eq!(labels.len(), 2);
        assert!(!labels.contains_key("team"));
        assert!(node.is_opted_out(&keys));
        assert_eq!(
            node.applied_label_keys().into_iter().collect::<Vec<_>>(),
            ["beta.kubernetes.io/osbuild"]
        );
        assert_eq!(node.kernel_version(), "10.0.17763.3887");
        assert!(node.is_windows());
        assert_eq!(node, IndexedNode::from(&full_node()).trim(&keys));
    }

    #[test]
    fn inputs_hash_ignores_heartbeat_fields_but_not_inputs() {
        let keys = LabelKeys::default();
        let hash = |node: &Node| node_inputs_hash(&indexed(node), &keys);
        let base = hash(&full_node());
        let mut heartbeat = full_node();
        heartbeat.metadata.resource_version = Some("999".into());
        heartbeat
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "other".into());
        assert_eq!(hash(&heartbeat), base);

        let mut upgraded = full_node();
        upgraded
            .status
            .as_mut()
            .unwrap()
            .node_info
            .as_mut()
            .unwrap()
            .kernel_version = "10.0.20348.1".into();
        assert_ne!(hash(&upgraded), base);

        let mut deleted_label = full_node();
        deleted_label
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("beta.kubernetes.io/osbuild");
        assert_ne!(hash(&deleted_label), base);

        let mut opted_in = full_node();
        opted_in.metadata.annotations = None;
        assert_ne!(hash(&opted_in), base);
    }
}
