//! A test's own corner of a cluster: a namespace, a unique prefix, and fixtures (nodes with a kubelet's
//! status, pod status) written the way a kubelet would write them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::cluster::{RUN_LABEL, client, kubeconfig, token_kubeconfig};

/// A unique, DNS-safe prefix: test name, process id and a counter.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let test: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    format!(
        "{}-{:x}{:x}{n}",
        test.trim_matches('-'),
        std::process::id() % 0xfff,
        nanos % 0xfffff
    )
}

pub struct TestEnv {
    pub client: Client,
    pub prefix: String,
    pub namespace: String,
}

impl TestEnv {
    /// A client, a fresh namespace (with its `default` ServiceAccount, which kube-controller-manager would
    /// create; we run none) and a unique prefix.
    pub async fn new(test: &str) -> Self {
        Self::with_client(client().await, test).await
    }

    /// The same on another control plane (the fault tests' own), given its client.
    pub async fn with_client(client: Client, test: &str) -> Self {
        let prefix = unique_prefix(test);
        let namespace = prefix.clone();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        // On a control plane with kube-controller-manager (tests/deployment.rs) it may have made it first.
        match Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &sa)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(err) => panic!("create default service account: {err}"),
        }
        Self {
            client,
            prefix,
            namespace,
        }
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `--node-selector` value that scopes a controller to this test's nodes.
    pub fn node_selector(&self) -> String {
        format!("{RUN_LABEL}={}", self.prefix)
    }

    pub fn node_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Creates a Node (with the test's run label plus `labels`) and, as a kubelet would, sets its status:
    /// nodeInfo, Ready, and allocatable room for pods so kube-scheduler can bind to it.
    pub async fn create_node(
        &self,
        suffix: &str,
        os: &str,
        kernel_version: &str,
        labels: &[(&str, &str)],
    ) -> String {
        let name = self.node_name(suffix);
        let mut all_labels = serde_json::Map::new();
        all_labels.insert(RUN_LABEL.into(), self.prefix.clone().into());
        all_labels.insert("kubernetes.io/os".into(), os.into());
        all_labels.insert("kubernetes.io/hostname".into(), name.clone().into());
        for (k, v) in labels {
            all_labels.insert((*k).into(), (*v).into());
        }
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": all_labels}}))
                .unwrap();
        self.nodes()
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("create node {name}: {e}"));
        self.set_node_status(&name, os, kernel_version).await;
        name
    }

    pub async fn create_windows_node(&self, suffix: &str, kernel_version: &str) -> String {
        self.create_node(suffix, "windows", kernel_version, &[])
            .await
    }

    /// Writes the node's status through the status subresource, like the kubelet's status updates.
    pub async fn set_node_status(&self, name: &str, os: &str, kernel_version: &str) {
        let status = json!({"status": {
            "nodeInfo": {
                "kernelVersion": kernel_version,
                "operatingSystem": os,
                "architecture": "amd64",
                "osImage": if os == "windows" { "Windows Server Datacenter" } else { "Ubuntu 24.04 LTS" },
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "containerd://2.1.0",
                "machineID": name, "systemUUID": name, "bootID": name
            },
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test harness",
                             "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}
        }});
        self.nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("set status of node {name}: {e}"));
    }

    pub async fn set_kernel_version(&self, name: &str, kernel_version: &str) {
        let patch = json!({"status": {"nodeInfo": {"kernelVersion": kernel_version}}});
        self.nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("set kernelVersion of node {name}: {e}"));
    }

    pub async fn node(&self, name: &str) -> Node {
        self.nodes()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get node {name}: {e}"))
    }

    pub async fn labels(&self, name: &str) -> std::collections::BTreeMap<String, String> {
        self.node(name).await.metadata.labels.unwrap_or_default()
    }

    /// Waits until node `name` carries label `key` = `value` (fails the test after [`TIMEOUT`]).
    pub async fn wait_label(&self, name: &str, key: &str, value: &str) {
        crate::wait::eventually(
            &format!("{name}: {key}={value}"),
            crate::wait::TIMEOUT,
            || async {
                (self.labels(name).await.get(key).map(String::as_str) == Some(value)).then_some(())
            },
        )
        .await;
    }

    /// Sets a pod's status through the status subresource, as the kubelet does.
    pub async fn set_pod_status(&self, name: &str, status: serde_json::Value) {
        self.pods()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .unwrap_or_else(|e| panic!("set status of pod {name}: {e}"));
    }

    /// Creates a ServiceAccount in the test namespace and writes a kubeconfig that authenticates as it with a
    /// token from the TokenRequest API: the identity the controller has in a cluster.
    pub async fn service_account_kubeconfig(&self, name: &str) -> PathBuf {
        self.service_account_kubeconfig_on(kubeconfig(), name).await
    }

    /// The same on the control plane whose admin kubeconfig is `admin` (a test's own `ControlPlane`).
    pub async fn service_account_kubeconfig_on(
        &self,
        admin: &std::path::Path,
        name: &str,
    ) -> PathBuf {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        accounts
            .create(&PostParams::default(), &sa)
            .await
            .expect("create service account");
        let path = std::env::temp_dir().join(format!("{}-{name}.kubeconfig", self.prefix));
        token_kubeconfig(&self.client, admin, &self.namespace, name, &path).await;
        path
    }

    /// Grants the ServiceAccount `account` of this test's namespace the cluster-wide `rules` (RBAC rules as
    /// JSON) through a ClusterRole and binding named `<prefix>-<name>`; returns that name, for [`Self::revoke`].
    pub async fn grant(&self, name: &str, account: &str, rules: serde_json::Value) -> String {
        let role = format!("{}-{name}", self.prefix);
        let cluster_role: ClusterRole =
            serde_json::from_value(json!({"metadata": {"name": role}, "rules": rules})).unwrap();
        Api::<ClusterRole>::all(self.client.clone())
            .create(&PostParams::default(), &cluster_role)
            .await
            .expect("create cluster role");
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": self.namespace}],
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(self.client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("create cluster role binding");
        role
    }

    /// Removes what [`Self::grant`] made; best effort.
    pub async fn revoke(&self, role: &str) {
        let _ = Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(role, &DeleteParams::default())
            .await;
        let _ = Api::<ClusterRole>::all(self.client.clone())
            .delete(role, &DeleteParams::default())
            .await;
    }

    /// Deletes this test's nodes and namespace; best effort, for runs against a kept control plane.
    pub async fn cleanup(self) {
        let lp = ListParams::default().labels(&self.node_selector());
        let _ = self
            .nodes()
            .delete_collection(&DeleteParams::default(), &lp)
            .await;
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

fn now() -> String {
    // RFC 3339 without a time crate: the API server only needs a valid timestamp.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = secs / 86_400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let (y, mo, d) = civil_from_days(days as i64);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
