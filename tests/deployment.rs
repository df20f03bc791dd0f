//! The Deployment really runs: on a control plane with kube-controller-manager and kwok
//! (`OSBUILD_CONTROL_PLANE_KWOK=1 scripts/control-plane up`, docs/control-plane.md), the shipped manifests
//! and chart make a ReplicaSet whose pods pass the `restricted` Pod Security level, are scheduled on fake
//! nodes and go Running; a drain evicts them through the eviction API and the PodDisruptionBudget keeps one
//! replica up; the leader-election Lease is held by one of those pods.
//!
//! kwok pods run nothing, so the controller under test runs as a process of the test with what a replica
//! has: the chart's ServiceAccount (a TokenRequest token) and the name of a real pod of the ReplicaSet
//! (`--pod-name`, which the Deployment sets from the Downward API).
//!
//! The control plane is this file's own (`OSBUILD_KWOK_KUBECONFIG`, started by scripts/test; else one in
//! target/kwok-cp): the manifests' admission policy is cluster-wide, and a drain moves every pod of a node.
//! The tests here share its nodes and cluster-scoped objects, so they run one at a time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{EvictParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{Controller, RUN_LABEL, TestEnv, eventually, token_kubeconfig};

/// kube-controller-manager and kwok react within seconds, but a drain retries evictions every 5 s.
const SLOW: Duration = Duration::from_secs(120);
/// The annotation kwok's `--manage-nodes-with-annotation-selector` picks (scripts/control-plane).
const KWOK_NODE: &str = "kwok.x-k8s.io/node";

/// One test at a time: they share this control plane's nodes and cluster-scoped objects.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The control plane with kube-controller-manager and kwok.
fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        if let Some(path) = std::env::var_os("OSBUILD_KWOK_KUBECONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        let output = Command::new(repo("scripts/control-plane"))
            .arg("up")
            .env("OSBUILD_CONTROL_PLANE_DIR", repo("target/kwok-cp"))
            .env("OSBUILD_CONTROL_PLANE_KWOK", "1")
            .env_remove("OSBUILD_ETCD_DATA_DIR")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/control-plane up");
        support::cluster::kubeconfig_from_up(&output).unwrap_or_else(|| {
            panic!("the control plane with kube-controller-manager and kwok did not start; these tests never skip")
        })
    })
}

async fn client() -> Client {
    support::client_from(kubeconfig()).await
}

fn kubectl_try(args: &[&str]) -> (bool, String, String) {
    support::kubectl_on(kubeconfig(), args, "")
}

fn kubectl(args: &[&str]) -> String {
    let (ok, stdout, stderr) = kubectl_try(args);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}

/// A Node that kwok manages (the kubelet's part: Ready, a Lease, its pods Running), created with the
/// nodeInfo a kubelet would report; kwok keeps what is there. Waits until it is Ready and kube-controller-
/// manager's node lifecycle controller has lifted the not-ready taint the API server put on it.
async fn fake_node(env: &TestEnv, suffix: &str, os: &str, kernel_version: &str) -> String {
    let name = env.node_name(suffix);
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE: "fake"},
            "labels": {RUN_LABEL: env.prefix, "kubernetes.io/os": os, "kubernetes.io/hostname": name},
        },
        "status": {"nodeInfo": {
            "operatingSystem": os, "architecture": "amd64", "kernelVersion": kernel_version,
            "kubeletVersion": "v1.37.2", "containerRuntimeVersion": "containerd://2.1.0", "osImage": "",
            "bootID": "", "machineID": "", "systemUUID": "", "kubeProxyVersion": "",
        }},
    }))
    .unwrap();
    env.nodes()
        .create(&PostParams::default(), &node)
        .await
        .unwrap_or_else(|e| panic!("create node {name}: {e}"));
    let nodes = env.nodes();
    eventually(
        &format!("node {name} Ready and untainted"),
        SLOW,
        || async {
            let node = nodes.get(&name).await.ok()?;
            let ready = node
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| !t.is_empty());
            (ready && !tainted).then_some(())
        },
    )
    .await;
    name
}

fn ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The pods of the Deployment's current ReplicaSet (made by kube-controller-manager, owned by the
/// Deployment) once `replicas` of them are Running and Ready; `on` limits the nodes they may be on.
async fn running_pods(
    client: &Client,
    ns: &str,
    deployment: &str,
    replicas: usize,
    on: &[&str],
) -> Vec<Pod> {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let what = format!("{replicas} pods of {ns}/{deployment}'s ReplicaSet Ready on {on:?}");
    eventually(&what, SLOW, || async {
        let set = sets
            .list(&ListParams::default())
            .await
            .ok()?
            .into_iter()
            .find(|rs| {
                rs.owner_references()
                    .iter()
                    .any(|o| o.kind == "Deployment" && o.name == deployment)
                    && rs.spec.replicas.unwrap_or(0) > 0
            })?;
        let uid = set.uid()?;
        let mine: Vec<Pod> = pods
            .list(&ListParams::default())
            .await
            .ok()?
            .into_iter()
            .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let ok = mine.len() == replicas
            && mine.iter().all(ready)
            && mine.iter().all(|p| on.contains(&node_of(p).as_str()));
        ok.then_some(mine)
    })
    .await
}

async fn disruptions_allowed(client: &Client, ns: &str, name: &str, expected: i32) {
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("PodDisruptionBudget {ns}/{name} allows {expected} disruption(s)"),
        SLOW,
        || async {
            let status = budgets.get(name).await.ok()?.status?;
            (status.disruptions_allowed == Some(expected)).then_some(())
        },
    )
    .await;
}

/// The namespace enforces `restricted`, and really: a privileged pod is refused there (a server-side dry
/// run, so nothing is stored) with the PodSecurity admission's 403.
async fn assert_restricted(client: &Client, ns: &str) {
    let namespace = Api::<Namespace>::all(client.clone()).get(ns).await.unwrap();
    assert_eq!(
        namespace
            .labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted"),
        "{ns} must enforce the restricted Pod Security level"
    );
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged-probe"},
        "spec": {"containers": [{"name": "c", "image": "probe", "securityContext": {"privileged": true}}]},
    }))
    .unwrap();
    let refused = Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &probe,
        )
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("PodSecurity \"restricted"),
                "refused by something else: {status:?}"
            );
        }
        other => panic!("a privileged pod was admitted in {ns}: {other:?}"),
    }
}

/// Runs the controller as the replica `pod` would: the chart's or manifests' ServiceAccount, `--pod-name`
/// and `--pod-namespace` from that pod; waits until the Lease names the pod as its holder.
async fn lead_as(env: &TestEnv, ns: &str, account: &str, pod: &Pod, lease: &str) -> Controller {
    let path = std::env::temp_dir().join(format!("{}-{account}.kubeconfig", env.prefix));
    token_kubeconfig(&env.client, kubeconfig(), ns, account, &path).await;
    let name = pod.name_any();
    let controller = Controller::spawn_with_kubeconfig(
        env,
        &path,
        &[
            "--leader-elect",
            "--pod-name",
            &name,
            "--pod-namespace",
            ns,
            "--lease-name",
            lease,
            "--placement=false",
        ],
    );
    controller.wait_ready().await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), ns);
    eventually(
        &format!("Lease {ns}/{lease} held by {name}"),
        SLOW,
        || async {
            let holder = leases.get(lease).await.ok()?.spec?.holder_identity?;
            (holder == name).then_some(())
        },
    )
    .await;
    controller
}

#[tokio::test]
async fn kustomize_install_runs_restricted_and_a_drain_honours_the_disruption_budget() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    let env = TestEnv::with_client(client.clone(), "deploy-kustomize").await;
    let a = fake_node(&env, "a", "linux", "6.1.0-28-amd64").await;
    let b = fake_node(&env, "b", "linux", "6.1.0-28-amd64").await;
    // Windows Server 2022, update of January 2024 (build 20348.2227: Microsoft's Windows Server 2022 update
    // history, KB5034129); kwok keeps the kernelVersion it was created with.
    let windows = fake_node(&env, "win", "windows", "10.0.20348.2227").await;
    let node = env.node(&windows).await;
    assert_eq!(
        node.status.unwrap().node_info.unwrap().kernel_version,
        "10.0.20348.2227"
    );

    // As a user installs it.
    let ns = "osbuild-controller";
    kubectl(&["apply", "-k", repo("manifests").to_str().unwrap()]);
    assert_restricted(&client, ns).await;
    let pods = running_pods(&client, ns, "osbuild-controller", 2, &[&a, &b]).await;

    // The Lease is held by a pod of the ReplicaSet, and the controller, with the manifests' ServiceAccount,
    // labels the fake Windows node (it does its job with the rights the manifests give it).
    let controller = lead_as(
        &env,
        ns,
        "osbuild-controller",
        &pods[0],
        "osbuild-controller",
    )
    .await;
    env.wait_label(&windows, "beta.kubernetes.io/osbuild", "20348")
        .await;
    drop(controller);

    // Drain the node of one replica: the eviction API lets one go (maxUnavailable: 1), its replacement is
    // scheduled on the other node and becomes Ready, and the drain completes.
    disruptions_allowed(&client, ns, "osbuild-controller", 1).await;
    let first = node_of(&pods[0]);
    let other = if first == a { b.clone() } else { a.clone() };
    kubectl(&[
        "drain",
        &first,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=90s",
    ]);
    let moved = running_pods(&client, ns, "osbuild-controller", 2, &[&other]).await;
    assert!(
        !moved.iter().any(|p| p.name_any() == pods[0].name_any()),
        "the drained replica was evicted and replaced"
    );

    // With the first node cordoned, draining the other one can evict one replica only: its replacement has
    // nowhere to go, and the budget refuses the second eviction (the drain gives up at its timeout).
    disruptions_allowed(&client, ns, "osbuild-controller", 1).await;
    let (drained, _, _) = kubectl_try(&[
        "drain",
        &other,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=12s",
    ]);
    assert!(!drained, "the drain must not take the last replica");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = "app.kubernetes.io/name=osbuild-controller";
    let pods_now = api
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    let up: Vec<&Pod> = pods_now
        .items
        .iter()
        .filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(
        up.len(),
        1,
        "one replica stays up: {:?}",
        names(&pods_now.items)
    );
    assert_eq!(node_of(up[0]), other);
    disruptions_allowed(&client, ns, "osbuild-controller", 0).await;
    // The eviction API itself says no: 429, as documented for a violated budget (asked by a client that
    // does not retry 429 itself, as kube's default one does for minutes).
    let once: Api<Pod> = Api::namespaced(support::client_without_retries(kubeconfig()).await, ns);
    match once.evict(&up[0].name_any(), &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 429, "{status:?}"),
        other => panic!("the last replica was evictable: {other:?}"),
    }

    // Uncordoned, the first node takes the pending replica; then the drain of the other completes.
    kubectl(&["uncordon", &first]);
    running_pods(&client, ns, "osbuild-controller", 2, &[&first, &other]).await;
    disruptions_allowed(&client, ns, "osbuild-controller", 1).await;
    kubectl(&[
        "drain",
        &other,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=90s",
    ]);
    running_pods(&client, ns, "osbuild-controller", 2, &[&first]).await;

    // Remove it all (the policy is cluster-wide; the next test must not meet it).
    kubectl(&[
        "delete",
        "-k",
        repo("manifests").to_str().unwrap(),
        "--wait=true",
        "--timeout=120s",
    ]);
    env.cleanup().await;
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter()
        .map(|p| {
            format!(
                "{} on {:?} ({:?})",
                p.name_any(),
                node_of(p),
                p.status.as_ref().and_then(|s| s.phase.clone())
            )
        })
        .collect()
}

const GATE: &str = "osbuild-controller.io/image-os";
/// A scheduling gate of someone else's, which the uninstall must leave in place.
const OTHER_GATE: &str = "example.com/quota";

fn gates(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .map(|g| g.iter().map(|g| g.name.clone()).collect())
        .unwrap_or_default()
}

fn windows_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "os": {"name": "windows"},
            "nodeSelector": {"kubernetes.io/os": "windows"},
            "schedulingGates": [{"name": OTHER_GATE}],
            "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/servercore:ltsc2022"}],
        },
    }))
    .unwrap()
}

/// The API server loads a new admission policy asynchronously: wait until a Windows pod (a server-side dry
/// run, nothing stored) comes back gated.
async fn wait_for_gating(pods: &Api<Pod>) {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the chart's admission policy gates Windows pods",
        SLOW,
        || async {
            let pod = pods.create(&dry_run, &windows_pod("probe")).await.ok()?;
            gates(&pod).iter().any(|g| g == GATE).then_some(())
        },
    )
    .await;
}

fn helm() -> PathBuf {
    support::built_by("tests/helm/build.sh", &[])
}

fn helm_run(args: &[String]) -> (bool, String, String) {
    let home = std::env::temp_dir().join("osbuild-helm-test-home");
    let out = Command::new(helm())
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Plays the kubelet for the pod of the Job `job` (kwok runs nothing in it): runs its container's command, the
/// controller binary with the container's args, as the pod's ServiceAccount (a TokenRequest token), then
/// writes the pod's phase and exit code as a kubelet would. Returns the command's output.
async fn run_job_pod(client: &Client, ns: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let pod = eventually(
        &format!("the pod of Job {ns}/{job} Running"),
        SLOW,
        || async {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items
                .into_iter()
                .find(ready)
        },
    )
    .await;
    let spec = pod.spec.clone().unwrap();
    let container = spec.containers[0].clone();
    let account = spec.service_account_name.clone().unwrap();
    let path = std::env::temp_dir().join(format!("{job}-{account}.kubeconfig"));
    token_kubeconfig(client, kubeconfig(), ns, &account, &path).await;
    let args = container.args.clone().unwrap_or_default();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(support::controller_binary())
            .args(&args)
            .env("KUBECONFIG", &path)
            .output()
            .expect("run the hook's command")
    })
    .await
    .unwrap();
    let code = out.status.code().unwrap_or(1);
    let now = chrono_now();
    let status = json!({"status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": now, "finishedAt": now}},
        }],
    }});
    pods.patch_status(
        &pod.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .expect("write the hook pod's status");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        code,
        0,
        "the hook failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn chrono_now() -> String {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
        .0
        .to_string()
}

/// What of the release is still in the cluster: its objects (by the chart's instance label, hooks included)
/// and Helm's release records.
fn release_objects(release: &str, ns: &str) -> Vec<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut left = Vec::new();
    for kinds in [
        "deployments,replicasets,pods,jobs,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies,configmaps",
        "clusterroles,clusterrolebindings,mutatingadmissionpolicies,mutatingadmissionpolicybindings",
    ] {
        left.extend(
            kubectl(&["get", kinds, "-A", "-l", &selector, "-o", "name"])
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    let records = format!("owner=helm,name={release}");
    left.extend(
        kubectl(&["get", "secrets", "-n", ns, "-l", &records, "-o", "name"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned),
    );
    left
}

#[tokio::test]
async fn helm_install_runs_restricted_and_uninstall_leaves_no_pod_gated() {
    let _serial = SERIAL.lock().await;
    let client = client().await;
    // The other test removes its install when it passes; when it failed, its admission policy would gate
    // this test's pod too, and its own failure is the one to read.
    kubectl(&[
        "delete",
        "-k",
        repo("manifests").to_str().unwrap(),
        "--ignore-not-found",
        "--wait=true",
        "--timeout=120s",
    ]);
    let env = TestEnv::with_client(client.clone(), "deploy-helm").await;
    let a = fake_node(&env, "a", "linux", "6.1.0-28-amd64").await;
    let b = fake_node(&env, "b", "linux", "6.1.0-28-amd64").await;
    let release = env.prefix.clone();
    let ns = format!("{}-sys", env.prefix);
    let fullname = format!("{release}-osbuild-controller");

    // As docs/install.md says: a namespace that enforces `restricted`, then the chart with its defaults
    // (placement on).
    kubectl(&["create", "namespace", &ns]);
    kubectl(&[
        "label",
        "namespace",
        &ns,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let chart = repo("charts/osbuild-controller");
    let install = [
        "install",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        &ns,
    ]
    .map(String::from);
    let (ok, _, err) = helm_run(&install);
    assert!(ok, "helm install: {err}");
    assert_restricted(&client, &ns).await;
    let pods = running_pods(&client, &ns, &fullname, 2, &[&a, &b]).await;
    // The Lease, named after the release, is held by one of its pods.
    let controller = lead_as(&env, &ns, &fullname, &pods[0], &fullname).await;
    drop(controller);

    // With the controller stopped, a new Windows pod is gated and stays so (the positive control for the
    // uninstall below): the policy gates it, nothing places it.
    let windows = env.pods();
    wait_for_gating(&windows).await;
    windows
        .create(&PostParams::default(), &windows_pod("app"))
        .await
        .unwrap();
    assert_eq!(
        gates(&windows.get("app").await.unwrap()),
        [OTHER_GATE, GATE]
    );

    // helm uninstall runs the pre-delete hook and waits for it; the test runs the hook's pod.
    let uninstall = [
        "uninstall",
        &release,
        "--namespace",
        &ns,
        "--wait",
        "--timeout=180s",
    ]
    .map(String::from);
    let helm = tokio::task::spawn_blocking(move || helm_run(&uninstall));
    let hook = run_job_pod(&client, &ns, &format!("{fullname}-ungate")).await;
    let (ok, _, err) = helm.await.unwrap();
    assert!(ok, "helm uninstall: {err}\nhook: {hook}");

    // The pod is no longer gated by us; the other gate stays. New Windows pods are not gated either.
    assert_eq!(gates(&windows.get("app").await.unwrap()), [OTHER_GATE]);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let fresh = windows
        .create(&dry_run, &windows_pod("after"))
        .await
        .unwrap();
    assert_eq!(gates(&fresh), [OTHER_GATE]);
    // And nothing of the release is left (its pods go once the garbage collector and kwok are done).
    eventually("nothing of the release left", SLOW, || async {
        release_objects(&release, &ns).is_empty().then_some(())
    })
    .await;

    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
    env.cleanup().await;
}
