//! The Pod as the detector's watch decodes it: only what the detector reads, straight from the API server's
//! JSON.
//!
//! The detector judges every pod of the cluster and keeps none, so each (re)start streams them all (150,000
//! at Kubernetes' limit). A whole `k8s_openapi` Pod builds every field (managedFields trees, labels and
//! annotations, env, volumes, resources, conditions...) only to drop it a moment later. [`WatchedPod`]
//! decodes what `detect`, `ambiguous`, `episodes` and the pull-secret lookup read into a `Pod` with just those
//! fields set, so the decisions stay written against `Pod` (and tested with whole ones); serde skips the rest
//! of the JSON without building it. Like the Node index (`indexed_node.rs`), for pods that are not kept.
//!
//! Missing or null fields decode as k8s-openapi decodes them: to their defaults.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, LocalObjectReference, Pod, PodCondition, PodSpec,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::Deserialize;

/// A Pod with only the fields the detector reads: name, namespace, uid, resourceVersion (the watch resumes
/// from it) and deletionTimestamp; spec.nodeName, each container's and init container's name and image,
/// imagePullSecrets and serviceAccountName; status.phase, the `ContainersReady` condition (when an episode
/// began: `detect::not_ready_since`) and each (init) container status's name, image, state and lastState. `Api<WatchedPod>` reads `/api/v1/pods`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(from = "WirePod")]
pub struct WatchedPod(Pod);

impl WatchedPod {
    pub fn pod(&self) -> &Pod {
        &self.0
    }
}

impl Resource for WatchedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
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
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

// The wire shape: only the fields we read; serde skips every other field without building it.

#[derive(Deserialize)]
struct WirePod {
    metadata: Option<WireMeta>,
    spec: Option<WireSpec>,
    status: Option<WireStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<Time>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    node_name: Option<String>,
    containers: Option<Vec<WireContainer>>,
    init_containers: Option<Vec<WireContainer>>,
    image_pull_secrets: Option<Vec<LocalObjectReference>>,
    service_account_name: Option<String>,
}

#[derive(Deserialize)]
struct WireContainer {
    name: Option<String>,
    image: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    phase: Option<String>,
    conditions: Option<Vec<WireCondition>>,
    container_statuses: Option<Vec<WireContainerStatus>>,
    init_container_statuses: Option<Vec<WireContainerStatus>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainerStatus {
    name: Option<String>,
    image: Option<String>,
    state: Option<ContainerState>,
    last_state: Option<ContainerState>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCondition {
    #[serde(rename = "type")]
    type_: Option<String>,
    status: Option<String>,
    last_transition_time: Option<Time>,
}

/// Only `ContainersReady` is read; the other conditions are dropped here.
fn containers_ready(conditions: Option<Vec<WireCondition>>) -> Option<Vec<PodCondition>> {
    let kept: Vec<PodCondition> = conditions?
        .into_iter()
        .filter(|c| c.type_.as_deref() == Some("ContainersReady"))
        .map(|c| PodCondition {
            type_: c.type_.unwrap_or_default(),
            status: c.status.unwrap_or_default(),
            last_transition_time: c.last_transition_time,
            ..PodCondition::default()
        })
        .collect();
    (!kept.is_empty()).then_some(kept)
}

impl From<WireContainer> for Container {
    fn from(wire: WireContainer) -> Self {
        Container {
            name: wire.name.unwrap_or_default(),
            image: wire.image,
            ..Container::default()
        }
    }
}

impl From<WireContainerStatus> for ContainerStatus {
    fn from(wire: WireContainerStatus) -> Self {
        ContainerStatus {
            name: wire.name.unwrap_or_default(),
            image: wire.image.unwrap_or_default(),
            state: wire.state,
            last_state: wire.last_state,
            ..ContainerStatus::default()
        }
    }
}

fn convert<W, T: From<W>>(list: Option<Vec<W>>) -> Option<Vec<T>> {
    list.map(|l| l.into_iter().map(T::from).collect())
}

impl From<WirePod> for WatchedPod {
    fn from(wire: WirePod) -> Self {
        let metadata = wire
            .metadata
            .map_or_else(ObjectMeta::default, |m| ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                deletion_timestamp: m.deletion_timestamp,
                ..ObjectMeta::default()
            });
        let spec = wire.spec.map(|s| PodSpec {
            node_name: s.node_name,
            containers: convert(s.containers).unwrap_or_default(),
            init_containers: convert(s.init_containers),
            image_pull_secrets: s.image_pull_secrets,
            service_account_name: s.service_account_name,
            ..PodSpec::default()
        });
        let status = wire.status.map(|s| PodStatus {
            phase: s.phase,
            conditions: containers_ready(s.conditions),
            container_statuses: convert(s.container_statuses),
            init_container_statuses: convert(s.init_container_statuses),
            ..PodStatus::default()
        });
        WatchedPod(Pod {
            metadata,
            spec,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::ambiguous::ambiguous_pulls;
    use crate::pods::detect::{
        active_failures, main_image, not_ready_since, pulls_failing, sandbox_recovered,
    };
    use crate::pods::episodes::PodRef;
    use serde_json::{Value, json};

    /// containerd's message for the mismatch: the one src/pods/detect.rs tests with (DOMAIN.md §4).
    const CONTAINERD: &str = "failed to create containerd task: failed to create shim task: hcs::CreateComputeSystem app: The container operating system does not match the host operating system.: unknown";
    /// containerd's CRI pull failure as reported in https://github.com/containerd/containerd/issues/6989.
    const CONTAINERD_PULL: &str = "rpc error: code = NotFound desc = failed to pull and unpack image \"mcr.microsoft.com/windows/servercore:ltsc2019\": no match for platform in manifest: not found";

    /// A pod as `kubectl get pod -o json` shows one a Deployment made on a Windows node: managedFields,
    /// labels, owner, env, volumes, resources, tolerations, conditions, and every kind of container state.
    fn wire_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-7d4b9c8f6-x2x9q", "generateName": "web-7d4b9c8f6-", "namespace": "shop",
                "uid": "0b3c1d2e-1f00-4a1b-9c3d-5e6f7a8b9c0d", "resourceVersion": "81234",
                "creationTimestamp": "2026-11-23T00:00:00Z", "deletionTimestamp": "2026-11-23T00:05:00Z",
                "deletionGracePeriodSeconds": 30,
                "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-22T23:00:00Z"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6",
                                     "uid": "11111111-2222-3333-4444-555555555555", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                                   "time": "2026-11-23T00:00:00Z", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}}}}}}]
            },
            "spec": {
                "nodeName": "akswin000001", "serviceAccountName": "web", "serviceAccount": "web",
                "imagePullSecrets": [{"name": "acr"}],
                "initContainers": [{"name": "init", "image": "example.azurecr.io/init:ltsc2022",
                                    "command": ["cmd", "/c", "exit 0"], "resources": {}}],
                "containers": [
                    {"name": "app", "image": "example.azurecr.io/web:ltsc2022", "imagePullPolicy": "IfNotPresent",
                     "env": [{"name": "ASPNETCORE_URLS", "value": "http://+:80"}],
                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m", "memory": "512Mi"}},
                     "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                    {"name": "sidecar", "image": "example.azurecr.io/sidecar:1"},
                    {"name": "logger", "image": "example.azurecr.io/logger:1"}
                ],
                "nodeSelector": {"kubernetes.io/os": "windows"},
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
                "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}]
            },
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-23T00:00:05Z"},
                               {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                                "message": "containers with unready status: [app logger]", "lastProbeTime": null,
                                "lastTransitionTime": "2026-11-23T00:00:06Z"}],
                "hostIP": "10.240.0.4", "podIP": "10.244.1.7", "qosClass": "Burstable",
                "startTime": "2026-11-23T00:00:01Z",
                "initContainerStatuses": [{"name": "init", "image": "example.azurecr.io/init:ltsc2022", "imageID": "",
                    "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                    "lastState": {"terminated": {"reason": "StartError", "exitCode": 128, "message": CONTAINERD,
                                                 "startedAt": "1970-01-01T00:00:00Z", "finishedAt": "2026-11-23T00:01:00Z",
                                                 "containerID": "containerd://abc"}}}],
                "containerStatuses": [
                    {"name": "app", "image": "example.azurecr.io/web@sha256:0123", "imageID": "", "ready": false,
                     "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull", "message": CONTAINERD_PULL}}},
                    {"name": "sidecar", "image": "example.azurecr.io/sidecar:1", "imageID": "sha256:1", "ready": true,
                     "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2026-11-23T00:00:10Z"}},
                     "resources": {"requests": {"cpu": "100m"}}, "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                    {"name": "logger", "image": "example.azurecr.io/logger:1", "imageID": "", "ready": false,
                     "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}
                ]
            }
        })
    }

    /// Everything the detector reads, the same from a whole Pod and from a watched one.
    fn readings(pod: &Pod) -> Value {
        let spec = pod.spec.clone().unwrap_or_default();
        json!({
            "ref": format!("{:?}", PodRef::of(pod)),
            "resourceVersion": pod.metadata.resource_version,
            "terminating": pod.metadata.deletion_timestamp.is_some(),
            "node": spec.node_name,
            "failures": format!("{:?}", active_failures(pod)),
            "pulls_failing": pulls_failing(pod),
            "ambiguous": format!("{:?}", ambiguous_pulls(pod)),
            "main_image": main_image(pod),
            "sandbox_recovered": sandbox_recovered(pod),
            "not_ready_since": format!("{:?}", not_ready_since(pod)),
            "pull_secrets": format!("{:?}", spec.image_pull_secrets),
            "service_account": spec.service_account_name,
        })
    }

    #[test]
    fn the_detector_reads_the_same_from_a_watched_pod() {
        let full: Pod = serde_json::from_value(wire_pod()).unwrap();
        let watched: WatchedPod = serde_json::from_value(wire_pod()).unwrap();
        let expected = readings(&full);
        assert_eq!(readings(watched.pod()), expected);
        // The positive control: the pod really carries each kind of finding.
        assert!(expected["failures"].as_str().unwrap().contains("init"));
        assert_eq!(expected["pulls_failing"], json!(["app", "logger"]));
        assert!(
            expected["ambiguous"]
                .as_str()
                .unwrap()
                .contains("web:ltsc2022")
        );
        assert_eq!(expected["terminating"], json!(true));
        assert!(
            expected["not_ready_since"]
                .as_str()
                .unwrap()
                .contains("2026-11-23T00:00:06Z")
        );
        // Whatever else the pod had is not built.
        assert!(watched.pod().metadata.labels.is_none());
        assert!(watched.pod().metadata.managed_fields.is_none());
        assert!(watched.pod().spec.as_ref().unwrap().volumes.is_none());
        let conditions = watched.pod().status.as_ref().unwrap().conditions.as_ref();
        assert_eq!(conditions.unwrap().len(), 1, "only ContainersReady is kept");
    }

    #[test]
    fn running_finished_and_bare_pods_read_the_same() {
        let mut running = wire_pod();
        running["status"]["phase"] = json!("Running");
        running["status"]["containerStatuses"][0]["state"] =
            json!({"running": {"startedAt": "2026-11-23T00:00:10Z"}});
        let mut unbound = wire_pod();
        unbound["spec"].as_object_mut().unwrap().remove("nodeName");
        unbound.as_object_mut().unwrap().remove("status");
        for pod in [
            running,
            unbound,
            json!({"metadata": {"name": "bare", "namespace": "n", "uid": "u"}}),
            json!({"metadata": {"name": "nulls", "namespace": null}, "spec": {"containers": null}, "status": null}),
            json!({}),
        ] {
            let full: Pod = serde_json::from_value(pod.clone()).unwrap();
            let watched: WatchedPod = serde_json::from_value(pod.clone()).unwrap();
            assert_eq!(readings(watched.pod()), readings(&full), "{pod}");
        }
    }

    #[test]
    fn a_pod_of_the_wrong_shape_is_an_error_not_a_panic() {
        for pod in [
            json!({"metadata": 5}),
            json!({"spec": {"containers": "app"}}),
            json!({"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": "x"}}}]}}),
        ] {
            assert!(serde_json::from_value::<Pod>(pod.clone()).is_err(), "{pod}");
            assert!(
                serde_json::from_value::<WatchedPod>(pod.clone()).is_err(),
                "{pod}"
            );
        }
    }
}
