//! The Node as the Node index keeps it: only what the decisions read, decoded straight from the API
//! server's JSON.
//!
//! A trimmed `k8s_openapi` Node still cost ~7-8 KiB per node in the index (the inline structs of a whole
//! Node, label maps, and our managedFields entry as a JSON tree; heaptrack numbers in docs/benchmarks.md).
//! [`IndexedNode`] keeps the name, uid and resourceVersion, the OS label and our labels, our ignore
//! annotation's presence, the label keys our field manager applied, and nodeInfo's kernelVersion and
//! operatingSystem: a few hundred bytes. Decoding skips everything else (images, conditions, other managers'
//! managedFields) without building it, so a list page never holds whole Nodes either.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ClusterResourceScope;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::FIELD_MANAGER;
use crate::core::labels::LabelKeys;
use crate::node_info::{NodeInputs, OS_LABEL};
use crate::ownership::applied_label_keys;

/// A Node reduced to the inputs of the node decisions. Built by decoding a Node (`Api<IndexedNode>` reads
/// `/api/v1/nodes`) and then [`trim`](IndexedNode::trim)med to the labels and annotation we read.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "WireNode")]
pub struct IndexedNode {
    /// Only name, uid and resourceVersion: kube's `Resource` (and so its reflector) needs an `ObjectMeta`.
    metadata: ObjectMeta,
    /// Label pairs sorted by key: all of them as decoded, only the OS label and ours once trimmed.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// Annotation keys (values are never kept): all as decoded, only our ignore annotation once trimmed.
    annotations: Box<[Box<str>]>,
    /// The label keys our field manager set with server-side apply, sorted.
    applied_labels: Box<[Box<str>]>,
    kernel_version: Box<str>,
    operating_system: Box<str>,
}

impl IndexedNode {
    /// Keeps only the labels and annotation the decisions read (the OS label and ours, our ignore
    /// annotation); the label keys are configurable, so this cannot happen while decoding.
    #[must_use]
    pub fn trim(mut self, keys: &LabelKeys) -> Self {
        if self
            .labels
            .iter()
            .any(|(k, _)| !(&**k == OS_LABEL || keys.is_ours(k)))
        {
            self.labels = std::mem::take(&mut self.labels)
                .into_vec()
                .into_iter()
                .filter(|(k, _)| &**k == OS_LABEL || keys.is_ours(k))
                .collect();
        }
        let ignore = keys.ignore_annotation();
        if self.annotations.iter().any(|k| **k != *ignore) {
            self.annotations = std::mem::take(&mut self.annotations)
                .into_vec()
                .into_iter()
                .filter(|k| **k == *ignore)
                .collect();
        }
        self
    }

    /// The node's name ("" if the server sent none).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The node's labels (after [`trim`](Self::trim): the OS label and ours).
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The label keys our field manager owns through server-side apply.
    pub fn applied_label_keys(&self) -> BTreeSet<String> {
        self.applied_labels
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub fn operating_system(&self) -> &str {
        &self.operating_system
    }

    /// The label pairs as kept, sorted by key (for hashing).
    pub fn label_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Bytes this node holds on the heap beyond its inline size (for the memory tests and the bench).
    pub fn heap_bytes(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::capacity);
        let boxed = |b: &[Box<str>]| b.iter().map(|k| k.len()).sum::<usize>();
        s(&self.metadata.name)
            + s(&self.metadata.uid)
            + s(&self.metadata.resource_version)
            + self.labels.len() * size_of::<(Box<str>, Box<str>)>()
            + self
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.annotations.len() * size_of::<Box<str>>()
            + boxed(&self.annotations)
            + self.applied_labels.len() * size_of::<Box<str>>()
            + boxed(&self.applied_labels)
            + self.kernel_version.len()
            + self.operating_system.len()
    }
}

impl NodeInputs for IndexedNode {
    fn is_windows(&self) -> bool {
        let labelled = self
            .labels
            .iter()
            .any(|(k, v)| &**k == OS_LABEL && v.eq_ignore_ascii_case("windows"));
        labelled || self.operating_system.eq_ignore_ascii_case("windows")
    }

    fn kernel_version(&self) -> &str {
        &self.kernel_version
    }

    fn is_opted_out(&self, keys: &LabelKeys) -> bool {
        let ignore = keys.ignore_annotation();
        self.annotations.iter().any(|k| **k == *ignore)
    }
}

/// The same reduction from a full Node (tests, and callers that already hold one).
impl From<&Node> for IndexedNode {
    fn from(node: &Node) -> Self {
        let meta = &node.metadata;
        let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
        Self {
            metadata: slim_meta(
                meta.name.clone(),
                meta.uid.clone(),
                meta.resource_version.clone(),
            ),
            labels: meta
                .labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            annotations: meta
                .annotations
                .iter()
                .flatten()
                .map(|(k, _)| k.as_str().into())
                .collect(),
            applied_labels: applied_label_keys(
                meta.managed_fields.as_deref().unwrap_or_default(),
                FIELD_MANAGER,
            )
            .into_iter()
            .map(String::into_boxed_str)
            .collect(),
            kernel_version: info.map_or("", |i| i.kernel_version.as_str()).into(),
            operating_system: info.map_or("", |i| i.operating_system.as_str()).into(),
        }
    }
}

fn slim_meta(
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
) -> ObjectMeta {
    let shrink = |s: Option<String>| {
        s.map(|mut s| {
            s.shrink_to_fit();
            s
        })
    };
    ObjectMeta {
        name: shrink(name),
        uid: shrink(uid),
        resource_version: shrink(resource_version),
        ..ObjectMeta::default()
    }
}

impl Resource for IndexedNode {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed("Node")
    }
    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn api_version((): &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed("nodes")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// The wire shape: only the fields we read. serde skips every other field without building it; annotation
// values and managedFields trees other than the label keys are skipped the same way.

#[derive(Deserialize)]
struct WireNode {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    status: Option<WireStatus>,
}

// JSON objects whose values are skipped (only their keys are read): a map to IgnoredAny, not a set.
#[allow(clippy::zero_sized_map_values)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, IgnoredAny>>,
    #[serde(default)]
    managed_fields: Option<Vec<WireManagedFields>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireManagedFields {
    manager: Option<String>,
    operation: Option<String>,
    fields_v1: Option<WireFields>,
}

#[derive(Deserialize)]
struct WireFields {
    #[serde(rename = "f:metadata")]
    metadata: Option<WireFieldsMeta>,
}

#[allow(clippy::zero_sized_map_values)]
#[derive(Deserialize)]
struct WireFieldsMeta {
    #[serde(rename = "f:labels")]
    labels: Option<BTreeMap<String, IgnoredAny>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    node_info: Option<WireNodeInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireNodeInfo {
    #[serde(default)]
    kernel_version: String,
    #[serde(default)]
    operating_system: String,
}

impl From<WireNode> for IndexedNode {
    fn from(wire: WireNode) -> Self {
        let meta = wire.metadata;
        let applied_labels = meta
            .managed_fields
            .into_iter()
            .flatten()
            .filter(|e| {
                e.manager.as_deref() == Some(FIELD_MANAGER)
                    && e.operation.as_deref() == Some("Apply")
            })
            .filter_map(|e| e.fields_v1?.metadata?.labels)
            .flat_map(BTreeMap::into_keys)
            .filter_map(|k| k.strip_prefix("f:").map(Box::from))
            .collect::<BTreeSet<Box<str>>>()
            .into_iter()
            .collect();
        let info = wire.status.and_then(|s| s.node_info);
        Self {
            metadata: slim_meta(meta.name, meta.uid, meta.resource_version),
            labels: meta
                .labels
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
            annotations: meta
                .annotations
                .into_iter()
                .flatten()
                .map(|(k, _)| k.into_boxed_str())
                .collect(),
            applied_labels,
            kernel_version: info
                .as_ref()
                .map_or("", |i| i.kernel_version.as_str())
                .into(),
            operating_system: info
                .as_ref()
                .map_or("", |i| i.operating_system.as_str())
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Node as a kubelet and our controller leave it (shape of `kubectl get node -o json` on AKS).
    fn wire_node() -> serde_json::Value {
        let images: Vec<_> = (0..10)
            .map(|i| json!({"names": [format!("mcr.microsoft.com/windows/servercore@sha256:{i:064x}")], "sizeBytes": 2_000_000_000_u64}))
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "akswin000001", "uid": "6c8f6a5e-2b9e-4a56-9d6f-3c1f3f0b9a11", "resourceVersion": "123456",
                "labels": {"kubernetes.io/os": "windows", "kubernetes.io/arch": "amd64", "agentpool": "win",
                           "node.kubernetes.io/windows-build": "10.0.20348", "topology.kubernetes.io/zone": "westeurope-1",
                           "beta.kubernetes.io/osbuild": "20348", "osbuild-controller.io/release": "ltsc2022"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                "managedFields": [
                    {"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:kubernetes.io/os": {}, "f:agentpool": {}}}, "f:status": {"f:images": {}}}},
                    {"manager": "osbuild-controller", "operation": "Apply", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:beta.kubernetes.io/osbuild": {}, "f:osbuild-controller.io/release": {}}}}}
                ]
            },
            "spec": {"podCIDR": "10.244.1.0/24", "providerID": "azure:///subscriptions/0000/virtualMachines/1"},
            "status": {
                "images": images,
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kernelVersion": "10.0.20348.2700", "osImage": "Windows Server 2022 Datacenter",
                             "operatingSystem": "windows", "architecture": "amd64", "kubeletVersion": "v1.31.2",
                             "containerRuntimeVersion": "containerd://1.7.20+azure", "machineID": "akswin000001"}
            }
        })
    }

    #[test]
    fn decodes_what_the_decisions_read() {
        let keys = LabelKeys::default();
        let node: IndexedNode = serde_json::from_value(wire_node()).unwrap();
        let node = node.trim(&keys);
        assert_eq!(node.meta().name.as_deref(), Some("akswin000001"));
        assert_eq!(node.kernel_version(), "10.0.20348.2700");
        assert!(node.is_windows());
        assert!(!node.is_opted_out(&keys));
        assert_eq!(
            node.labels().keys().collect::<Vec<_>>(),
            [
                "beta.kubernetes.io/osbuild",
                "kubernetes.io/os",
                "osbuild-controller.io/release"
            ]
        );
        assert_eq!(
            node.applied_label_keys().into_iter().collect::<Vec<_>>(),
            [
                "beta.kubernetes.io/osbuild",
                "osbuild-controller.io/release"
            ],
            "only our Apply entry's labels, not the kubelet's"
        );
        // The same decisions from the full Node and from the index.
        let full: Node = serde_json::from_value(wire_node()).unwrap();
        assert_eq!(IndexedNode::from(&full).trim(&keys), node);
    }

    #[test]
    fn a_node_costs_well_under_a_kibibyte() {
        let node = serde_json::from_value::<IndexedNode>(wire_node())
            .unwrap()
            .trim(&LabelKeys::default());
        let bytes = size_of::<IndexedNode>() + node.heap_bytes();
        assert!(bytes < 1024, "{bytes} bytes");
    }

    #[test]
    fn missing_and_odd_fields_decode_to_empty_inputs() {
        let node: IndexedNode =
            serde_json::from_value(json!({"metadata": {"name": "n", "managedFields": [{"manager": "osbuild-controller", "operation": "Apply"}]}}))
                .unwrap();
        assert_eq!(node.kernel_version(), "");
        assert!(!node.is_windows());
        assert!(node.applied_label_keys().is_empty());
        assert!(serde_json::from_value::<IndexedNode>(json!({"metadata": {"labels": 5}})).is_err());
    }
}
