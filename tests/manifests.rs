//! The shipped manifests against the real kube-apiserver: `kubectl kustomize manifests` applied server-side,
//! the objects as the server stores them, the controller running with the ServiceAccount's own token and
//! doing its whole job, least privilege checked with SubjectAccessReviews, the annotate-pods overlay, and the
//! Prometheus objects and docs that go with them.
//!
//! The base uses fixed names (namespace, ServiceAccount, ClusterRole `osbuild-controller`), so every test
//! applies it the same way and applying is idempotent; only the base is ever applied under those names. The
//! overlay test applies the overlay under a test-unique name prefix and namespace, so that granting `patch
//! pods` there cannot leak into the base's checks running in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{
    Access, Controller, EventQuery, TIMEOUT, TestEnv, access, allowed, eventually,
    kubectl_with_stdin,
};

/// Namespace and ServiceAccount of the base manifests.
const NS: &str = "osbuild-controller";
const SA: &str = "osbuild-controller";
const MANAGER: &str = "osbuild-manifests-test";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// `kubectl kustomize DIR` with the built kubectl.
fn render(dir: &str) -> String {
    let dir = repo(dir);
    kubectl_with_stdin(&["kustomize", dir.to_str().expect("utf-8 path")], "")
}

/// `kubectl apply --server-side` as `manager`; returns the applied objects as the server stored them.
fn apply_as(yaml: &str, manager: &str) -> Vec<Value> {
    apply_with(yaml, manager, &[])
}

fn apply_with(yaml: &str, manager: &str, extra: &[&str]) -> Vec<Value> {
    let manager = format!("--field-manager={manager}");
    let mut args = vec!["apply", "--server-side", &manager, "-o", "json"];
    args.extend_from_slice(extra);
    args.extend(["-f", "-"]);
    let out = kubectl_with_stdin(&args, yaml);
    let applied: Value = serde_json::from_str(&out).expect("kubectl apply -o json prints JSON");
    match applied["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![applied],
    }
}

/// The base alone (manifests/base: no placement). The default install (`manifests`) adds the placement
/// component, whose MutatingAdmissionPolicy is cluster-wide: on this shared control plane it would gate the
/// Windows pods of every other test, so it is only dry-run here (and applied for real by tests/placement.rs,
/// on a control plane of its own).
fn apply_base() -> Vec<Value> {
    apply_as(&render("manifests/base"), MANAGER)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the applied objects"))
}

/// A kubeconfig that authenticates as an existing ServiceAccount, with a token from the TokenRequest API.
async fn service_account_kubeconfig(
    client: &Client,
    namespace: &str,
    name: &str,
    tag: &str,
) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{tag}-{namespace}-{name}.kubeconfig"));
    support::token_kubeconfig(client, support::kubeconfig(), namespace, name, &path).await;
    path
}

/// Everything the controller does, as the API server sees it (docs/install.md#permissions).
const NEEDED: &[Access<'static>] = &[
    access("list", "", "nodes"),
    access("watch", "", "nodes"),
    access("patch", "", "nodes").named("win-1"),
    access("get", "", "pods").ns("shop"),
    access("list", "", "pods"),
    access("watch", "", "pods"),
    access("list", "", "events"),
    access("watch", "", "events"),
    access("create", "events.k8s.io", "events").ns("shop"),
    access("create", "events.k8s.io", "events").ns("default"),
    access("patch", "events.k8s.io", "events")
        .ns("shop")
        .named("web-0.1871f"),
    access("create", "coordination.k8s.io", "leases").ns(NS),
    access("get", "coordination.k8s.io", "leases")
        .ns(NS)
        .named("osbuild-controller"),
    access("update", "coordination.k8s.io", "leases")
        .ns(NS)
        .named("osbuild-controller"),
];

/// What it must not be able to do.
const FORBIDDEN: &[Access<'static>] = &[
    // Never used: nodes come from the watch (the soak's audit log, docs/reliability.md).
    access("get", "", "nodes").named("win-1"),
    access("patch", "", "pods").ns("shop").named("web-0"),
    access("update", "", "pods").ns("shop").named("web-0"),
    access("delete", "", "pods").ns("shop").named("web-0"),
    access("create", "", "pods").ns("shop"),
    access("create", "", "pods").sub("eviction").ns("shop"),
    access("delete", "", "nodes").named("win-1"),
    access("update", "", "nodes").named("win-1"),
    access("create", "", "nodes"),
    access("patch", "", "nodes").sub("status").named("win-1"),
    access("get", "", "secrets").ns(NS),
    access("list", "", "secrets"),
    access("get", "", "configmaps").ns("kube-system"),
    access("create", "", "serviceaccounts").sub("token").ns(NS),
    access("create", "", "events").ns("shop"),
    access("delete", "events.k8s.io", "events").ns("shop"),
    access("update", "coordination.k8s.io", "leases")
        .ns(NS)
        .named("another-lease"),
    access("delete", "coordination.k8s.io", "leases")
        .ns(NS)
        .named("osbuild-controller"),
    access("update", "coordination.k8s.io", "leases")
        .ns("kube-system")
        .named("osbuild-controller"),
    access("create", "coordination.k8s.io", "leases").ns("kube-system"),
    access("escalate", "rbac.authorization.k8s.io", "clusterroles"),
    access("bind", "rbac.authorization.k8s.io", "clusterroles"),
    access("impersonate", "", "serviceaccounts"),
];

async fn check_access(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    for a in NEEDED {
        if !allowed(client, namespace, name, a).await {
            wrong.push(format!("cannot {}", a.describe()));
        }
    }
    for a in FORBIDDEN {
        if allowed(client, namespace, name, a).await {
            wrong.push(format!("can {}", a.describe()));
        }
    }
    wrong
}

#[tokio::test]
async fn base_applies_server_side_with_a_locked_down_deployment() {
    let client = support::client().await;
    let applied = apply_base();
    let kinds: BTreeSet<String> = applied
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    let expected: BTreeSet<String> = [
        "Namespace/osbuild-controller",
        "ServiceAccount/osbuild-controller",
        "ClusterRole/osbuild-controller",
        "ClusterRoleBinding/osbuild-controller",
        "Role/osbuild-controller-leader-election",
        "RoleBinding/osbuild-controller-leader-election",
        "Deployment/osbuild-controller",
        "Service/osbuild-controller",
        "PodDisruptionBudget/osbuild-controller",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds, expected);
    for object in &applied {
        let labels = &object["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/name"], "osbuild-controller",
            "{object}"
        );
        assert_eq!(
            labels["app.kubernetes.io/version"],
            env!("CARGO_PKG_VERSION"),
            "{object}"
        );
        if object["kind"] != "Namespace"
            && object["kind"] != "ClusterRole"
            && object["kind"] != "ClusterRoleBinding"
        {
            assert_eq!(object["metadata"]["namespace"], NS, "{object}");
        }
    }

    // Applying again changes nothing, and another field manager applying the same manifests does not
    // conflict (a field the server defaults differently inside an atomic struct would). That one is a
    // server-side dry run: a second owner of atomic fields (ClusterRole rules) would make later changes to
    // the manifests conflict on a kept control plane.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let generation = deployments.get(SA).await.unwrap().metadata.generation;
    apply_base();
    apply_with(
        &render("manifests/base"),
        "another-manager",
        &["--dry-run=server"],
    );
    assert_eq!(
        deployments.get(SA).await.unwrap().metadata.generation,
        generation
    );

    let namespace = Api::<Namespace>::all(client.clone()).get(NS).await.unwrap();
    assert_eq!(
        namespace
            .labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );

    // The Deployment as the server stores it.
    let d = serde_json::to_value(deployments.get(SA).await.unwrap()).unwrap();
    let at = |pointer: &str| d.pointer(pointer).cloned().unwrap_or(Value::Null);
    assert_eq!(at("/spec/replicas"), 2);
    let pod = "/spec/template/spec";
    assert_eq!(at(&format!("{pod}/serviceAccountName")), SA);
    assert_eq!(
        at(&format!("{pod}/nodeSelector")),
        json!({"kubernetes.io/os": "linux"})
    );
    assert_eq!(
        at(&format!("{pod}/securityContext")),
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let containers = at(&format!("{pod}/containers"));
    assert_eq!(containers.as_array().map(Vec::len), Some(1));
    let c = &containers[0];
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/osbuild-controller/osbuild-controller:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(c["args"], json!(["run", "--leader-elect"]));
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"], json!({"type": "RuntimeDefault"}));
    let env_from_field = |name: &str| {
        c["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == name))
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    assert_eq!(env_from_field("POD_NAME"), Some(json!("metadata.name")));
    assert_eq!(
        env_from_field("POD_NAMESPACE"),
        Some(json!("metadata.namespace"))
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    for key in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][key][resource].is_string(),
                "resources.{key}.{resource}: {c}"
            );
        }
    }

    // The pod template passes the "restricted" Pod Security Standard that the namespace enforces: a
    // server-side dry run of a Pod made from it goes through admission (and a pod without the security
    // context does not, so the check is not vacuous).
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let from_template: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "osbuild-controller-dry-run-", "labels": at("/spec/template/metadata/labels")},
        "spec": at(pod),
    }))
    .unwrap();
    pods.create(&dry_run, &from_template)
        .await
        .expect("the pod template passes PodSecurity restricted");
    let mut lax = serde_json::to_value(&from_template).unwrap();
    lax["spec"]["securityContext"] = json!({});
    lax["spec"]["containers"][0]["securityContext"] = json!({});
    let err = pods
        .create(&dry_run, &serde_json::from_value(lax).unwrap())
        .await
        .expect_err("a pod without a security context is refused in the namespace");
    assert!(err.to_string().contains("restricted"), "{err}");

    // Every flag in the Deployment's args is a flag of this binary.
    let mut args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    args.push("--help".to_owned());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "osbuild-controller {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Service, PodDisruptionBudget, RBAC.
    let service = serde_json::to_value(
        Api::<Service>::namespaced(client.clone(), NS)
            .get(SA)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "protocol": "TCP", "targetPort": "metrics"}])
    );
    let selector = json!({"app.kubernetes.io/name": "osbuild-controller", "app.kubernetes.io/instance": "osbuild-controller"});
    assert_eq!(service["spec"]["selector"], selector);
    assert_eq!(at("/spec/selector/matchLabels"), selector);
    let pdb = serde_json::to_value(
        Api::<PodDisruptionBudget>::namespaced(client.clone(), NS)
            .get(SA)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], selector);
    assert!(
        pdb["spec"]["maxUnavailable"] == 1 || pdb["spec"]["minAvailable"] == 1,
        "{pdb}"
    );

    let role = serde_json::to_value(
        Api::<ClusterRole>::all(client.clone())
            .get(SA)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch", "patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ]),
        "the ClusterRole grants exactly this; widening it needs a reason (docs/install.md#permissions)"
    );
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get(SA)
        .await
        .unwrap();
    assert_eq!(binding.role_ref.name, SA);
    let subjects = serde_json::to_value(&binding.subjects).unwrap();
    assert_eq!(
        subjects,
        json!([{"kind": "ServiceAccount", "name": SA, "namespace": NS}])
    );
    let lease_role = Api::<Role>::namespaced(client.clone(), NS)
        .get("osbuild-controller-leader-election")
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&lease_role.rules)
            .unwrap()
            .contains("leases")
    );
    let lease_binding = Api::<RoleBinding>::namespaced(client.clone(), NS)
        .get("osbuild-controller-leader-election")
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&lease_binding.subjects).unwrap(),
        json!([{"kind": "ServiceAccount", "name": SA, "namespace": NS}])
    );
    // What kubectl reported applying is what the server has.
    assert_eq!(find(&applied, "ClusterRole", SA)["rules"], role["rules"]);
}

#[tokio::test]
async fn base_rbac_grants_what_the_controller_needs_and_nothing_more() {
    let client = support::client().await;
    apply_base();
    let wrong = check_access(&client, NS, SA).await;
    assert!(
        wrong.is_empty(),
        "the base ServiceAccount {}",
        wrong.join("; ")
    );
}

#[derive(Deserialize)]
struct MessageCase {
    message: String,
    os_mismatch: bool,
    variant: Option<String>,
}

/// The first real containerd OS-mismatch message (tests/data/error_messages.json has its source).
fn containerd_message() -> String {
    let cases: Vec<MessageCase> =
        serde_json::from_str(include_str!("data/error_messages.json")).unwrap();
    cases
        .into_iter()
        .find(|c| c.os_mismatch && c.variant.as_deref() == Some("containerd"))
        .expect("a containerd message")
        .message
}

/// A pod bound to `node` whose container crash-loops with the OS mismatch, as the kubelet would report it.
async fn mismatching_pod(env: &TestEnv, name: &str, node: &str) {
    let image = "mcr.microsoft.com/windows/servercore:ltsc2022";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": image}]},
    }))
    .unwrap();
    env.pods()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    env.set_pod_status(name, json!({"phase": "Pending", "containerStatuses": [{
        "name": "app", "image": image, "imageID": "", "ready": false, "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
        "lastState": {"terminated": {"reason": "StartError", "exitCode": 128, "message": containerd_message(),
                                     "startedAt": "2026-11-23T00:00:00Z", "finishedAt": "2026-11-23T00:00:01Z"}}
    }]}))
    .await;
}

async fn events_about(client: &Client, namespace: &str, name: &str, reason: &str) -> Vec<Event> {
    EventQuery::new(namespace)
        .regarding(name)
        .reason(reason)
        .list(client)
        .await
}

#[tokio::test]
async fn the_manifests_service_account_labels_nodes_flags_pods_and_stays_ready() {
    let env = TestEnv::new("manifests-job").await;
    apply_base();
    let kubeconfig = service_account_kubeconfig(&env.client, NS, SA, &env.prefix).await;
    let windows = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    // Windows 6.2 (a kubelet 1.9.1 bug): unparseable, so a Warning Event every reconcile; with a 2s resync
    // the Recorder's second one is a patch of the first (an Event series).
    let odd = env.create_windows_node("odd", "6.2.09200.192").await;
    // The Deployment's args (`run --leader-elect`), with the Lease where the Deployment's POD_NAMESPACE would
    // put it: the only one the Role lets it use. No other test uses this Lease.
    let controller = Controller::spawn_with_kubeconfig(
        &env,
        &kubeconfig,
        &[
            "--leader-elect",
            "--lease-namespace",
            NS,
            "--lease-duration",
            "5s",
            "--resync-interval",
            "2s",
            // The base Deployment's OSBUILD_PLACEMENT=false: the base has no placement rights.
            "--placement=false",
        ],
    );
    controller.wait_ready().await;
    let (_, ready) = controller.get("/readyz").await;
    for watch in ["nodes", "pods", "pod-sandbox-events"] {
        assert!(ready.contains(&format!("[+] watch {watch}: ok")), "{ready}");
    }

    // Labels the Windows node.
    eventually("the Windows node is labelled", TIMEOUT, || async {
        let labels = env.labels(&windows).await;
        (labels.get("beta.kubernetes.io/osbuild").map(String::as_str) == Some("17763")
            && labels
                .get("osbuild-controller.io/release")
                .map(String::as_str)
                == Some("ltsc2019"))
        .then_some(())
    })
    .await;

    // It leads (only the leader writes the labels above).
    let lease = Api::<Lease>::namespaced(env.client.clone(), NS)
        .get("osbuild-controller")
        .await
        .expect("the leader-election Lease");
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty()),
        "the Lease has a holder"
    );

    // Flags a pod failing with the OS mismatch.
    mismatching_pod(&env, "web", &windows).await;
    let event = eventually("an OSVersionMismatch Event on the pod", TIMEOUT, || async {
        events_about(&env.client, &env.namespace, "web", "OSVersionMismatch")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        controller
            .metric(
                "osbuild_pod_os_mismatch",
                &[
                    ("namespace", &env.namespace),
                    ("pod", "web"),
                    ("container", "app")
                ]
            )
            .await,
        Some(1.0)
    );

    // Warns about the unparseable node, and may patch its own Events.
    let warning = eventually(
        "a KernelVersionUnparseable Event series on the odd node",
        TIMEOUT,
        || async {
            events_about(&env.client, "default", &odd, "KernelVersionUnparseable")
                .await
                .into_iter()
                .find(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
        },
    )
    .await;
    assert_eq!(
        warning.reporting_controller.as_deref(),
        Some("osbuild-controller")
    );
    assert_eq!(
        controller
            .metric("osbuild_nodes_unlabelled", &[("reason", "unparseable")])
            .await,
        Some(1.0)
    );

    // Stays ready, and nothing it tried was refused.
    let (status, _) = controller.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(controller.get("/healthz").await.0, 200);
    let scrape = controller.scrape().await;
    let failures = scrape.sum("osbuild_reconcile_errors_total", &[])
        + scrape.sum("osbuild_watch_errors_total", &[]);
    assert_eq!(failures, 0.0, "errors; log:\n{}", controller.log());

    // Every metric family it exports is documented.
    let documented = read("docs/metrics.md");
    let undocumented: Vec<String> = scrape
        .families("osbuild_")
        .into_iter()
        .filter(|m| !documented.contains(&format!("`{m}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/metrics.md: {undocumented:?}"
    );
    if let Some(rss) = controller
        .metric("osbuild_process_resident_memory_bytes", &[])
        .await
    {
        eprintln!("controller RSS: {:.1} MiB", rss / 1048576.0);
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_annotate_pods_overlay_grants_patch_pods_and_annotates() {
    let env = TestEnv::new("manifests-overlay").await;
    let overlay = render("manifests/overlays/annotate-pods");

    // Applied under a name prefix and namespace of this test's own, so the extra grant stays here.
    let namespace = format!("{}-sys", env.prefix);
    let prefix = format!("{}-", env.prefix);
    let dir = std::env::temp_dir().join(format!("{}-overlay", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rendered.yaml"), &overlay).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("resources:\n  - rendered.yaml\nnamePrefix: {prefix}\nnamespace: {namespace}\n"),
    )
    .unwrap();
    let isolated = kubectl_with_stdin(&["kustomize", dir.to_str().unwrap()], "");
    let applied = apply_as(&isolated, MANAGER);
    let sa = format!("{prefix}osbuild-controller");

    let base = apply_base();
    let mut rules = find(&base, "ClusterRole", SA)["rules"]
        .as_array()
        .unwrap()
        .clone();
    rules.push(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}));
    assert_eq!(
        find(&applied, "ClusterRole", &sa)["rules"],
        Value::Array(rules),
        "the overlay adds exactly patch pods"
    );
    let args =
        &find(&applied, "Deployment", &sa)["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args, &json!(["run", "--leader-elect", "--annotate-pods"]));

    let patch_pods = access("patch", "", "pods").ns(&env.namespace).named("web");
    assert!(allowed(&env.client, &namespace, &sa, &patch_pods).await);
    assert!(
        !allowed(&env.client, NS, SA, &patch_pods).await,
        "the base must not patch pods"
    );

    // And with that identity --annotate-pods works.
    let kubeconfig = service_account_kubeconfig(&env.client, &namespace, &sa, &env.prefix).await;
    let windows = env.create_windows_node("ws2019", "10.0.17763.3887").await;
    let controller = Controller::spawn_with_kubeconfig(&env, &kubeconfig, &["--annotate-pods"]);
    controller.wait_ready().await;
    mismatching_pod(&env, "web", &windows).await;
    let annotation = eventually("the os-mismatch annotation on the pod", TIMEOUT, || async {
        let pod = env.pods().get("web").await.ok()?;
        pod.annotations()
            .get("osbuild-controller.io/os-mismatch")
            .cloned()
    })
    .await;
    let findings: Value = serde_json::from_str(&annotation).expect("the annotation is JSON");
    assert_eq!(findings[0]["container"], "app");
    let (_, body) = controller.get("/metrics").await;
    assert!(
        !body.contains("osbuild_reconcile_errors_total"),
        "{body}\n{}",
        controller.log()
    );

    drop(controller);
    let _ = std::process::Command::new(support::kubectl())
        .args(["delete", "--wait=false", "--ignore-not-found", "-f", "-"])
        .env("KUBECONFIG", support::kubeconfig())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(isolated.as_bytes())?;
            child.wait()
        });
    let _ = std::fs::remove_dir_all(&dir);
    env.cleanup().await;
}

/// The alert names in the PrometheusRule (`- alert: NAME` lines).
fn alerts(rule: &str) -> Vec<String> {
    rule.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// GitHub's anchor for a Markdown heading: lowercase, spaces to '-', punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn prometheus_objects_render_and_every_alert_has_a_runbook() {
    let rendered = render("manifests/prometheus");
    for needle in [
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "honorLabels: true",
        "port: metrics",
        "namespace: osbuild-controller",
    ] {
        assert!(
            rendered.contains(needle),
            "kubectl kustomize manifests/prometheus lacks {needle:?}"
        );
    }
    let rule = read("manifests/prometheus/prometheusrule.yaml");
    let names = alerts(&rule);
    assert!(names.len() >= 6, "{names:?}");

    let runbooks = read("docs/alerts.md");
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    let urls: Vec<&str> = rule
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(str::trim)
        .collect();
    assert_eq!(urls.len(), names.len(), "one runbook_url per alert");
    for (name, url) in names.iter().zip(&urls) {
        let expected = format!(
            "https://github.com/osbuild-controller/osbuild-controller/blob/main/docs/alerts.md#{}",
            anchor(name)
        );
        assert_eq!(*url, expected, "runbook_url of {name}");
        assert!(
            anchors.contains(&anchor(name)),
            "docs/alerts.md has no section `## {name}`"
        );
    }

    // Every metric an alert uses is documented, and is one the controller has.
    let documented = read("docs/metrics.md");
    let source = all_sources();
    for metric in metric_names_in(&rule) {
        assert!(
            documented.contains(&format!("`{metric}`")),
            "{metric} is not in docs/metrics.md"
        );
        let short = metric.trim_start_matches("osbuild_");
        assert!(
            source.contains(&format!("\"{short}\"")),
            "{metric} (used by an alert) is not defined in src/"
        );
    }
}

/// Every Rust source file under src/, concatenated: metrics are defined in more than one module.
fn all_sources() -> String {
    fn walk(dir: &std::path::Path, out: &mut String) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = String::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    out
}

/// `osbuild_*` names in a text (PromQL in the rules).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("osbuild_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let preceded_by_word = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/');
        if !preceded_by_word {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_in_the_source_is_documented_and_every_documented_one_exists() {
    let source = all_sources();
    let documented = read("docs/metrics.md");
    // The name is the first string literal after each `opts(` / `HistogramOpts::new(` (counters and
    // histograms in src/metrics.rs) and `ComputedGauge::new(` (gauges computed at scrape time elsewhere).
    let mut defined = BTreeSet::new();
    for marker in ["opts(", "HistogramOpts::new(", "ComputedGauge::new("] {
        for (i, _) in source.match_indices(marker) {
            let after = &source[i + marker.len()..];
            if let Some(start) = after.find('"') {
                let literal = &after[start + 1..];
                if let Some(end) = literal.find('"') {
                    // Only when the literal comes right after the marker (whitespace between).
                    if after[..start].trim().is_empty() {
                        defined.insert(format!("osbuild_{}", &literal[..end]));
                    }
                }
            }
        }
    }
    assert!(defined.len() >= 11, "{defined:?}");
    let missing: Vec<&String> = defined
        .iter()
        .filter(|m| !documented.contains(&format!("`{m}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    // Documented names (table rows) exist, apart from the process collector's.
    let stale: Vec<String> = documented
        .lines()
        .filter_map(|l| l.strip_prefix("| `osbuild_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("osbuild_{n}"))
        .filter(|n| !n.starts_with("osbuild_process_") && !defined.contains(n))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/metrics.md documents metrics that do not exist: {stale:?}"
    );
}

/// The default install adds placement (the admission policy, `patch pods`, `get` on secrets,
/// serviceaccounts and runtimeclasses, `--placement` on); the overlay without placement is the base: no
/// policy, no extra right, `--placement=false`. The policy is valid for the real API server (a server-side
/// dry run compiles its CEL); the rights are checked with SubjectAccessReviews under a test-unique name.
#[tokio::test]
async fn the_placement_component_adds_the_policy_and_only_the_rights_it_needs() {
    let env = TestEnv::new("manifests-placement").await;
    let full = render("manifests");
    let without = render("manifests/overlays/without-placement");
    for kind in ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"] {
        assert!(
            full.contains(&format!("kind: {kind}\n")),
            "manifests lacks {kind}"
        );
        assert!(
            !without.contains(&format!("kind: {kind}\n")),
            "without-placement has {kind}"
        );
    }
    assert!(full.contains("name: osbuild-controller-placement"));
    assert!(!without.contains("osbuild-controller-placement"));
    let placement_env = |yaml: &str| {
        let i = yaml
            .find("name: OSBUILD_PLACEMENT\n")
            .expect("OSBUILD_PLACEMENT in the Deployment");
        yaml[i..].lines().nth(1).unwrap().trim().to_owned()
    };
    assert_eq!(placement_env(&full), "value: \"true\"");
    assert_eq!(placement_env(&without), "value: \"false\"");

    // The whole default install is valid for the server, policy CEL included; nothing is stored.
    let dry = apply_with(&full, MANAGER, &["--dry-run=server"]);
    let policy = find(
        &dry,
        "MutatingAdmissionPolicy",
        "osbuild-controller-placement",
    );
    assert_eq!(
        policy["spec"]["failurePolicy"], "Ignore",
        "nothing to fail closed"
    );
    let binding = find(
        &dry,
        "MutatingAdmissionPolicyBinding",
        "osbuild-controller-placement",
    );
    let excluded = &binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"];
    assert!(excluded.to_string().contains("kube-system") && excluded.to_string().contains(NS));

    // The rights, under this test's own names (the policy and its binding are left out).
    let namespace = format!("{}-sys", env.prefix);
    let prefix = format!("{}-", env.prefix);
    let dir = std::env::temp_dir().join(format!("{}-placement", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rendered.yaml"), &full).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!("resources:\n  - rendered.yaml\nnamePrefix: {prefix}\nnamespace: {namespace}\n"),
    )
    .unwrap();
    let isolated = kubectl_with_stdin(&["kustomize", dir.to_str().unwrap()], "");
    // Everything but the policy and its binding, picked by kind (never by labels, which they carry too).
    let rights: Vec<Value> = serde_norway::Deserializer::from_str(&isolated)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("kustomize prints YAML"))
        .filter(|o| !o.is_null())
        .filter(|o| {
            !matches!(
                o["kind"].as_str(),
                Some("MutatingAdmissionPolicy" | "MutatingAdmissionPolicyBinding")
            )
        })
        .collect();
    let applied = apply_with(
        &json!({"apiVersion": "v1", "kind": "List", "items": rights}).to_string(),
        MANAGER,
        &[],
    );
    assert!(
        !applied.iter().any(|o| o["kind"]
            .as_str()
            .unwrap_or_default()
            .starts_with("MutatingAdmission")),
        "the policy must not be applied on the shared control plane"
    );
    let role = find(
        &applied,
        "ClusterRole",
        &format!("{prefix}osbuild-controller-placement"),
    );
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["secrets", "serviceaccounts"], "verbs": ["get"]},
            {"apiGroups": ["node.k8s.io"], "resources": ["runtimeclasses"], "verbs": ["get"]},
        ])
    );
    let sa = format!("{prefix}osbuild-controller");
    let needed = [
        access("patch", "", "pods").ns("shop").named("web-0"),
        access("get", "", "secrets").ns("shop").named("pull"),
        access("get", "", "serviceaccounts")
            .ns("shop")
            .named("default"),
        access("get", "node.k8s.io", "runtimeclasses").named("hyperv"),
    ];
    let forbidden = [
        access("list", "", "secrets"),
        access("watch", "", "secrets"),
        access("list", "", "secrets").ns("shop"),
        access("update", "", "pods").ns("shop").named("web-0"),
        access("delete", "", "pods").ns("shop").named("web-0"),
        access("create", "", "pods").ns("shop"),
        access("list", "", "serviceaccounts"),
        access("create", "", "serviceaccounts")
            .sub("token")
            .ns("shop"),
        access("get", "", "configmaps").ns("shop"),
        access("list", "node.k8s.io", "runtimeclasses"),
    ];
    let mut wrong = Vec::new();
    for a in &needed {
        if !allowed(&env.client, &namespace, &sa, a).await {
            wrong.push(format!("cannot {}", a.describe()));
        }
    }
    for a in &forbidden {
        if allowed(&env.client, &namespace, &sa, a).await {
            wrong.push(format!("can {}", a.describe()));
        }
    }
    assert!(
        wrong.is_empty(),
        "with placement, the ServiceAccount {}",
        wrong.join("; ")
    );
    let _ = kubectl_with_stdin(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        &isolated,
    );
    env.cleanup().await;
}
