//! The Helm chart (charts/osbuild-controller) with a real helm (built from Go modules by tests/helm/build.sh)
//! against the real kube-apiserver:
//!
//! - `helm lint --strict`, with the defaults and with every switch turned;
//! - the default render is the kustomize manifests (parsed objects, not text), the annotatePods switch is the
//!   annotate-pods overlay, the audit switch the audit overlay, the Prometheus switches are
//!   manifests/prometheus;
//! - every values switch rendered, applied server-side (dry run, then for real) and its RBAC checked with
//!   SubjectAccessReviews: the ServiceAccount may do what the chosen options need and nothing more;
//! - bad values fail at `helm install` (values.schema.json) and create nothing;
//! - `helm install`, `helm upgrade`, `helm uninstall`: the controller runs with the chart's ServiceAccount and
//!   labels a node; an upgrade changes args and RBAC together; uninstall leaves none of the chart's objects.
//!
//! Every release gets a namespace and a name of its own (so cluster-scoped names never meet the kustomize
//! tests' `osbuild-controller` objects); the Prometheus Operator's CRDs come from tests/helm/crds.sh.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kube::Client;
use serde::Deserialize;
use serde_json::{Value, json};
use support::{
    Access, Controller, TestEnv, access, allowed, built_by, ensure_monitoring_crds,
    kubectl_with_stdin,
};

const CHART: &str = "charts/osbuild-controller";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The helm binary (built and cached by version by tests/helm/build.sh).
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| built_by("tests/helm/build.sh", &[]))
}

/// Runs helm against the test control plane; returns (success, stdout, stderr).
fn helm_run(args: &[&str]) -> (bool, String, String) {
    let cache = std::env::temp_dir().join("osbuild-helm-test-home");
    let out = Command::new(helm())
        .args(args)
        .env("KUBECONFIG", support::kubeconfig())
        // Keep helm's caches and repository config out of the user's home.
        .env("HELM_CACHE_HOME", cache.join("cache"))
        .env("HELM_CONFIG_HOME", cache.join("config"))
        .env("HELM_DATA_HOME", cache.join("data"))
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn helm_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = helm_run(args);
    assert!(ok, "helm {args:?} failed:\n{stderr}");
    stdout
}

/// `helm template RELEASE CHART -n NAMESPACE --set ...` as parsed objects.
fn template(release: &str, namespace: &str, sets: &[String]) -> Vec<Value> {
    parse_yaml(&template_text(release, namespace, sets))
}

fn template_text(release: &str, namespace: &str, sets: &[String]) -> String {
    let chart = repo(CHART);
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    for s in sets {
        args.extend(["--set-json", s.as_str()]);
    }
    helm_ok(&args)
}

/// Every non-empty document of a multi-document YAML stream.
fn parse_yaml(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("helm and kubectl print valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kustomize(dir: &str) -> Vec<Value> {
    let dir = repo(dir);
    parse_yaml(&kubectl_with_stdin(
        &["kustomize", dir.to_str().unwrap()],
        "",
    ))
}

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o["kind"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Objects by kind/name, with the labels that only say which tool rendered them (`helm.sh/chart`,
/// `app.kubernetes.io/managed-by`) taken out of every label map, after checking their values.
fn comparable(objects: Vec<Value>, managed_by: &str) -> BTreeMap<String, Value> {
    fn strip(value: &mut Value, managed_by: &str) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(labels)) = map.get_mut("labels") {
                    if let Some(by) = labels.remove("app.kubernetes.io/managed-by") {
                        assert_eq!(by, managed_by, "app.kubernetes.io/managed-by");
                    }
                    labels.remove("helm.sh/chart");
                }
                for v in map.values_mut() {
                    strip(v, managed_by);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| strip(v, managed_by)),
            _ => {}
        }
    }
    objects
        .into_iter()
        .map(|mut o| {
            strip(&mut o, managed_by);
            (key(&o), o)
        })
        .collect()
}

fn assert_same_objects(helm: BTreeMap<String, Value>, kustomize: BTreeMap<String, Value>) {
    assert_eq!(
        helm.keys().collect::<Vec<_>>(),
        kustomize.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (k, h) in &helm {
        assert_eq!(
            h, &kustomize[k],
            "{k} differs:\nhelm:      {h}\nkustomize: {}",
            kustomize[k]
        );
    }
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "one {kind} in {objects:?}");
    found[0]
}

fn args_of(objects: &[Value]) -> Vec<String> {
    one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

#[test]
fn chart_lints_strict_with_defaults_and_with_every_switch() {
    let chart = repo(CHART);
    let chart = chart.to_str().unwrap();
    helm_ok(&["lint", "--strict", chart]);
    let mut args = vec!["lint", "--strict", chart];
    let sets = every_switch("lint-ns", "lint-watched");
    for s in &sets {
        args.extend(["--set-json", s.as_str()]);
    }
    helm_ok(&args);
}

/// `objects` without the pre-delete hook that placement brings (asserting it is exactly the ungate Job and
/// its RBAC, so nothing else hides behind the filter).
fn without_uninstall_hook(mut objects: Vec<Value>) -> Vec<Value> {
    let hooks: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete")
        .map(key)
        .collect();
    assert_eq!(
        hooks,
        [
            "ClusterRole/osbuild-controller-ungate",
            "ClusterRoleBinding/osbuild-controller-ungate",
            "Job/osbuild-controller-ungate",
            "ServiceAccount/osbuild-controller-ungate",
        ]
        .map(String::from)
        .into(),
    );
    objects.retain(|o| !hooks.contains(&key(o)));
    objects
}

#[test]
fn default_render_is_the_kustomize_manifests() {
    // `helm install osbuild-controller -n osbuild-controller` makes what `kubectl apply -k manifests`
    // makes, except the Namespace: a release cannot own the namespace its own record lives in
    // (docs/install.md: --create-namespace).
    let helm = template("osbuild-controller", "osbuild-controller", &[]);
    // Except the uninstall hook with placement, which kustomize has no counterpart of (its uninstall is the
    // ordered steps of docs/install.md); tests/deployment.rs runs it.
    let helm = without_uninstall_hook(helm);
    let mut kustomized = kustomize("manifests");
    let namespaces: Vec<Value> = kustomized
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .cloned()
        .collect();
    assert_eq!(namespaces.len(), 1, "the kustomize base has its Namespace");
    kustomized.retain(|o| o["kind"] != "Namespace");
    assert!(kustomized.len() >= 8, "{kustomized:?}");
    assert_same_objects(
        comparable(helm.clone(), "Helm"),
        comparable(kustomized, "kustomize"),
    );
    // And the annotatePods switch is the annotate-pods overlay.
    let annotating = template(
        "osbuild-controller",
        "osbuild-controller",
        &[
            r#"controller.annotatePods=true"#.into(),
            "placement.enabled=false".into(),
        ],
    );
    let mut overlay = kustomize("manifests/overlays/annotate-pods");
    overlay.retain(|o| o["kind"] != "Namespace");
    assert_same_objects(
        comparable(annotating, "Helm"),
        comparable(overlay, "kustomize"),
    );
    // And the audit switch is the audit overlay (base, placement and components/audit).
    let auditing = template(
        "osbuild-controller",
        "osbuild-controller",
        &["audit.enabled=true".into()],
    );
    let mut overlay = kustomize("manifests/overlays/audit");
    overlay.retain(|o| o["kind"] != "Namespace");
    assert!(
        overlay
            .iter()
            .any(|o| o["metadata"]["name"] == "osbuild-controller-audit"),
        "the overlay has the audit's ClusterRole"
    );
    assert_same_objects(
        comparable(without_uninstall_hook(auditing), "Helm"),
        comparable(overlay, "kustomize"),
    );
    // Every object names its chart (Artifact Hub and `helm get` rely on it).
    for o in &helm {
        assert_eq!(
            o["metadata"]["labels"]["helm.sh/chart"],
            "osbuild-controller-0.1.0"
        );
    }
}

#[test]
fn prometheus_switches_render_manifests_prometheus() {
    let helm = template(
        "osbuild-controller",
        "osbuild-controller",
        &[
            "serviceMonitor.enabled=true".into(),
            "prometheusRule.enabled=true".into(),
            r#"serviceMonitor.labels={"release":"kube-prometheus-stack"}"#.into(),
        ],
    );
    let kustomized = kustomize("manifests/prometheus");
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let (h, k) = (one(&helm, kind), one(&kustomized, kind));
        assert_eq!(h["spec"], k["spec"], "{kind} spec");
        assert_eq!(h["metadata"]["name"], k["metadata"]["name"]);
        assert_eq!(h["metadata"]["namespace"], k["metadata"]["namespace"]);
    }
    assert_eq!(
        one(&helm, "ServiceMonitor")["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    // Another release name: the alerts follow the job, which is the Service's name.
    let other = template(
        "shop",
        "monitoring",
        &["prometheusRule.enabled=true".into()],
    );
    let rules = one(&other, "PrometheusRule")["spec"].to_string();
    assert!(
        rules.contains(r#"job=\"shop-osbuild-controller\""#),
        "{rules}"
    );
    assert!(!rules.contains(r#"job=\"osbuild-controller\""#), "{rules}");
    assert_eq!(
        one(&other, "Service")["metadata"]["name"],
        "shop-osbuild-controller"
    );
}

/// Values that turn every switch away from its default (`--set-json` arguments).
fn every_switch(namespace: &str, watched: &str) -> Vec<String> {
    vec![
        r#"image.repository="registry.example.com/osbuild-controller""#.into(),
        format!(r#"image.digest="sha256:{}""#, "a".repeat(64)),
        r#"image.pullPolicy="Always""#.into(),
        r#"imagePullSecrets=[{"name":"regcred"}]"#.into(),
        "replicaCount=3".into(),
        "revisionHistoryLimit=2".into(),
        r#"leaderElection.leaseDuration="20s""#.into(),
        "controller.annotatePods=true".into(),
        format!(r#"controller.watchNamespace="{watched}""#),
        "audit.enabled=true".into(),
        r#"audit.interval="5m""#.into(),
        r#"controller.nodeSelector="kubernetes.io/os=windows""#.into(),
        r#"controller.osbuildLabel="example.com/osbuild""#.into(),
        r#"controller.labelPrefix="osbuild.example.com""#.into(),
        "controller.forceConflicts=true".into(),
        "controller.dryRun=true".into(),
        r#"controller.resyncInterval="5m""#.into(),
        "controller.concurrency=8".into(),
        r#"controller.logFormat="text""#.into(),
        r#"controller.logFilter="osbuild_controller=debug,kube=warn""#.into(),
        format!(r#"extraArgs=["--lease-namespace={namespace}"]"#),
        r#"extraEnv=[{"name":"EXTRA","value":"1"}]"#.into(),
        r#"serviceAccount.annotations={"example.com/owner":"platform"}"#.into(),
        r#"podAnnotations={"example.com/scrape":"yes"}"#.into(),
        r#"podLabels={"team":"platform"}"#.into(),
        r#"resources={"requests":{"cpu":"10m","memory":"32Mi"}}"#.into(),
        r#"nodeSelector={"kubernetes.io/os":"linux","pool":"system"}"#.into(),
        r#"tolerations=[{"key":"CriticalAddonsOnly","operator":"Exists"}]"#.into(),
        r#"affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"pool","operator":"In","values":["system"]}]}]}}}"#.into(),
        r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"ScheduleAnyway","labelSelector":{"matchLabels":{"team":"platform"}}}]"#.into(),
        r#"priorityClassName="""#.into(),
        "terminationGracePeriodSeconds=10".into(),
        "service.port=9090".into(),
        "podDisruptionBudget.enabled=false".into(),
        "serviceMonitor.enabled=true".into(),
        r#"serviceMonitor.interval="1m""#.into(),
        "prometheusRule.enabled=true".into(),
        r#"prometheusRule.labels={"role":"alert-rules"}"#.into(),
        "networkPolicy.enabled=true".into(),
        r#"networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#.into(),
        r#"networkPolicy.apiServer.cidrs=["10.0.0.1/32","127.0.0.1/32"]"#.into(),
    ]
}

// ---------------------------------------------------------------- access reviews

/// One access to ask a SubjectAccessReview about.
#[derive(Clone, Debug)]
/// What a release's ServiceAccount must and must not be able to do, given its options.
struct Expected<'a> {
    needed: Vec<Access<'a>>,
    forbidden: Vec<Access<'a>>,
}

/// The controller's needs (docs/install.md#permissions) for a release in `ns` with Lease `lease`,
/// pods watched in `watched` (all when None), with or without annotating pods and leader election.
fn expected<'a>(
    ns: &'a str,
    lease: &'a str,
    watched: Option<&'a str>,
    annotate: bool,
    leader: bool,
    placement: bool,
    audit: bool,
) -> Expected<'a> {
    let mut needed = vec![
        access("list", "", "nodes"),
        access("watch", "", "nodes"),
        access("patch", "", "nodes").named("win-1"),
        access("create", "events.k8s.io", "events").ns("shop"),
        access("create", "events.k8s.io", "events").ns("default"),
        access("patch", "events.k8s.io", "events")
            .ns("shop")
            .named("web-0.1871f"),
    ];
    let mut forbidden = vec![
        access("get", "", "nodes").named("win-1"),
        access("update", "", "pods").ns("shop").named("web-0"),
        access("delete", "", "pods").ns("shop").named("web-0"),
        access("create", "", "pods").ns("shop"),
        access("delete", "", "nodes").named("win-1"),
        access("update", "", "nodes").named("win-1"),
        access("create", "", "nodes"),
        access("list", "", "secrets"),
        access("watch", "", "secrets"),
        access("get", "", "configmaps").ns("kube-system"),
        access("create", "", "serviceaccounts").ns(ns),
        access("create", "", "events").ns("shop"),
        access("delete", "events.k8s.io", "events").ns("shop"),
        access("update", "coordination.k8s.io", "leases")
            .ns(ns)
            .named("another-lease"),
        access("delete", "coordination.k8s.io", "leases")
            .ns(ns)
            .named(lease),
        access("create", "coordination.k8s.io", "leases").ns("kube-system"),
        access("escalate", "rbac.authorization.k8s.io", "clusterroles"),
        access("bind", "rbac.authorization.k8s.io", "clusterroles"),
        access("impersonate", "", "serviceaccounts"),
    ];
    match watched {
        None => {
            needed.extend([
                access("get", "", "pods").ns("shop"),
                access("list", "", "pods"),
                access("watch", "", "pods"),
                access("list", "", "events"),
                access("watch", "", "events"),
            ]);
            let patch = access("patch", "", "pods").ns("shop").named("web-0");
            if annotate {
                needed.push(patch)
            } else {
                forbidden.push(patch)
            }
        }
        Some(w) => {
            needed.extend([
                access("get", "", "pods").ns(w),
                access("list", "", "pods").ns(w),
                access("watch", "", "pods").ns(w),
                access("list", "", "events").ns(w),
                access("watch", "", "events").ns(w),
            ]);
            forbidden.extend([
                access("list", "", "pods"),
                access("list", "", "pods").ns("shop"),
                access("get", "", "pods").ns("shop"),
                access("list", "", "events"),
                access("patch", "", "pods").ns("shop").named("web-0"),
            ]);
            let patch = access("patch", "", "pods").ns(w).named("web-0");
            if annotate {
                needed.push(patch)
            } else {
                forbidden.push(patch)
            }
        }
    }
    // Placement: patch any pod (affinity and gate), read pull secrets, ServiceAccounts and RuntimeClasses by
    // name; never list or watch secrets (above).
    let placement_access = [
        access("patch", "", "pods").ns("shop").named("web-0"),
        access("get", "", "secrets").ns("shop").named("regcred"),
        access("get", "", "serviceaccounts")
            .ns("shop")
            .named("default"),
        access("get", "node.k8s.io", "runtimeclasses").named("hyperv"),
    ];
    if placement {
        forbidden.retain(|f| !(f.verb == "patch" && f.resource == "pods"));
        needed.extend(placement_access);
    } else {
        forbidden.extend(placement_access);
    }
    // The audit: list and watch the workload kinds (in the watched namespace only, when there is one),
    // list RuntimeClasses; get pull secrets and ServiceAccounts by name. No writes, no secret listing
    // (above).
    let audited = watched.unwrap_or("shop");
    let namespaced_audit = [
        access("list", "apps", "deployments").ns(audited),
        access("watch", "apps", "deployments").ns(audited),
        access("watch", "batch", "cronjobs").ns(audited),
        access("list", "apps", "statefulsets").ns(audited),
        access("list", "apps", "daemonsets").ns(audited),
        access("list", "apps", "replicasets").ns(audited),
        access("list", "batch", "jobs").ns(audited),
        access("list", "batch", "cronjobs").ns(audited),
        access("get", "", "secrets").ns(audited).named("regcred"),
        access("get", "", "serviceaccounts")
            .ns(audited)
            .named("default"),
    ];
    forbidden.extend([
        access("patch", "apps", "deployments")
            .ns(audited)
            .named("web"),
        access("delete", "batch", "jobs").ns(audited).named("web"),
        access("watch", "node.k8s.io", "runtimeclasses"),
    ]);
    let runtime_classes = access("list", "node.k8s.io", "runtimeclasses");
    if audit {
        needed.extend(namespaced_audit);
        needed.push(runtime_classes);
        if watched.is_some() {
            forbidden.extend([
                access("list", "apps", "deployments"),
                access("watch", "apps", "deployments"),
                access("list", "apps", "deployments").ns("shop"),
            ]);
            if !placement {
                forbidden.push(access("get", "", "secrets").ns("shop").named("regcred"));
            }
        } else {
            needed.extend([
                access("list", "apps", "deployments"),
                access("watch", "apps", "deployments"),
            ]);
        }
    } else {
        // Placement also reads secrets and ServiceAccounts by name: only lists and watches are the audit's
        // alone.
        forbidden.extend(
            namespaced_audit
                .into_iter()
                .filter(|a| a.verb != "get" || !placement),
        );
        forbidden.push(runtime_classes);
    }
    let lease_access = [
        access("create", "coordination.k8s.io", "leases").ns(ns),
        access("get", "coordination.k8s.io", "leases")
            .ns(ns)
            .named(lease),
        access("update", "coordination.k8s.io", "leases")
            .ns(ns)
            .named(lease),
    ];
    if leader {
        needed.extend(lease_access);
    } else {
        forbidden.extend(lease_access);
    }
    Expected { needed, forbidden }
}

async fn wrong_access(client: &Client, ns: &str, sa: &str, expected: &Expected<'_>) -> Vec<String> {
    let mut wrong = Vec::new();
    for a in &expected.needed {
        if !allowed(client, ns, sa, a).await {
            wrong.push(format!("cannot {}", a.describe()));
        }
    }
    for a in &expected.forbidden {
        if allowed(client, ns, sa, a).await {
            wrong.push(format!("can {a:?}"));
        }
    }
    wrong
}

// ---------------------------------------------------------------- variants on the real API server

/// `kubectl apply --server-side` of a rendered chart: a server-side dry run first, then for real.
/// The admission policy of placement gates every new Windows pod in the cluster: on the shared control
/// plane it would gate other tests' pods, so it is only ever dry-run here (tests/placement.rs applies it on
/// a control plane of its own). Everything else is applied for real.
const DRY_RUN_ONLY: [&str; 2] = ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"];

fn apply(yaml: &str) -> Vec<Value> {
    let all = parse_yaml(yaml);
    let (policy, rest): (Vec<Value>, Vec<Value>) = all
        .into_iter()
        .partition(|o| DRY_RUN_ONLY.contains(&o["kind"].as_str().unwrap_or_default()));
    let list =
        |items: &[Value]| json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let server_side = |items: &[Value], dry_run: bool| -> Vec<Value> {
        if items.is_empty() {
            return Vec::new();
        }
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager=osbuild-helm-test",
            "-o",
            "json",
        ];
        if dry_run {
            args.push("--dry-run=server");
        }
        args.extend(["-f", "-"]);
        let out = kubectl_with_stdin(&args, &list(items));
        let applied: Value = serde_json::from_str(&out).expect("JSON");
        match applied["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![applied],
        }
    };
    server_side(&rest, true);
    let mut applied = server_side(&policy, true);
    applied.extend(server_side(&rest, false));
    applied
}

fn delete(yaml: &str) {
    kubectl_with_stdin(
        &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
        yaml,
    );
}

/// The flags in the args are flags of this binary (`run ARGS --help` fails on an unknown one).
fn assert_binary_takes(args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "osbuild-controller {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Variant {
    name: &'static str,
    sets: Vec<String>,
}

#[tokio::test]
async fn every_switch_applies_server_side_and_its_rbac_follows() {
    ensure_monitoring_crds();
    let env = TestEnv::new("helm-variants").await;
    let watched = format!("{}-watched", env.prefix);
    let variants = [
        Variant {
            name: "default",
            sets: vec![],
        },
        Variant {
            name: "annotate",
            sets: vec!["controller.annotatePods=true".into()],
        },
        Variant {
            name: "watch",
            sets: vec![format!(r#"controller.watchNamespace="{watched}""#)],
        },
        Variant {
            name: "single",
            sets: vec![
                "replicaCount=1".into(),
                "leaderElection.enabled=false".into(),
            ],
        },
        Variant {
            name: "audit",
            sets: vec!["audit.enabled=true".into()],
        },
        Variant {
            name: "audit-watch",
            sets: vec![
                "audit.enabled=true".into(),
                format!(r#"controller.watchNamespace="{watched}""#),
            ],
        },
        Variant {
            name: "norbac",
            sets: vec!["rbac.create=false".into()],
        },
        Variant {
            name: "ownsa",
            sets: vec![
                "serviceAccount.create=false".into(),
                r#"serviceAccount.name="default""#.into(),
            ],
        },
        Variant {
            name: "all",
            sets: every_switch(&env.namespace, &watched),
        },
    ];
    kubectl_with_stdin(&["create", "namespace", &watched], "");

    for variant in &variants {
        let release = format!("{}-{}", env.prefix, variant.name);
        let fullname = format!("{release}-osbuild-controller");
        let fullname = fullname[..fullname.len().min(63)].trim_end_matches('-');
        let text = template_text(&release, &env.namespace, &variant.sets);
        let rendered = parse_yaml(&text);
        let applied = apply(&text);
        assert_eq!(
            applied.iter().map(key).collect::<BTreeSet<_>>(),
            rendered.iter().map(key).collect::<BTreeSet<_>>(),
            "{}: everything rendered was applied",
            variant.name
        );
        let args = args_of(&rendered);
        assert_binary_takes(&args);
        let sa = match variant.name {
            "ownsa" => "default".to_owned(),
            _ => fullname.to_owned(),
        };
        let kinds: BTreeSet<&str> = rendered
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();

        let placement = kinds.contains("MutatingAdmissionPolicy");
        let audit = matches!(variant.name, "audit" | "audit-watch" | "all");
        let (watch, annotate, leader) = match variant.name {
            "annotate" => (None, true, true),
            "watch" | "audit-watch" => (Some(watched.as_str()), false, true),
            "single" => (None, false, false),
            "all" => (Some(watched.as_str()), true, true),
            _ => (None, false, true),
        };
        if variant.name == "norbac" {
            // Nothing granted: every need is refused (the positive control is the default variant).
            assert!(!kinds.contains("ClusterRole") && !kinds.contains("Role"));
            let needs = expected(&env.namespace, fullname, None, false, true, false, true);
            for a in &needs.needed {
                assert!(
                    !allowed(&env.client, &env.namespace, &sa, a).await,
                    "norbac can {a:?}"
                );
            }
        } else {
            let wrong = wrong_access(
                &env.client,
                &env.namespace,
                &sa,
                &expected(
                    &env.namespace,
                    fullname,
                    watch,
                    annotate,
                    leader,
                    placement,
                    audit,
                ),
            )
            .await;
            assert!(
                wrong.is_empty(),
                "{}: the ServiceAccount {}",
                variant.name,
                wrong.join("; ")
            );
        }
        assert_eq!(args.contains(&"--annotate-pods".to_owned()), annotate);
        let interval = if variant.name == "all" { "5m" } else { "10m" };
        assert_eq!(
            args.contains(&format!("--audit-interval={interval}")),
            audit,
            "{args:?}"
        );
        assert_eq!(args.contains(&"--leader-elect".to_owned()), leader);
        if leader {
            assert!(
                args.contains(&format!("--lease-name={fullname}")),
                "{args:?}"
            );
        }
        if let Some(w) = watch {
            assert!(args.contains(&format!("--namespace={w}")), "{args:?}");
        }
        match variant.name {
            "single" => assert!(!kinds.contains("Role"), "no Lease Role: {kinds:?}"),
            "all" => {
                for kind in ["NetworkPolicy", "ServiceMonitor", "PrometheusRule"] {
                    assert!(kinds.contains(kind), "{kind} in {kinds:?}");
                }
                assert!(!kinds.contains("PodDisruptionBudget"));
                let pod = &one(&rendered, "Deployment")["spec"]["template"];
                assert_eq!(pod["metadata"]["labels"]["team"], "platform");
                assert_eq!(pod["metadata"]["annotations"]["example.com/scrape"], "yes");
                assert_eq!(
                    pod["spec"]["containers"][0]["image"],
                    format!(
                        "registry.example.com/osbuild-controller@sha256:{}",
                        "a".repeat(64)
                    )
                );
                assert!(pod["spec"].get("priorityClassName").is_none());
                assert_eq!(pod["spec"]["tolerations"][0]["key"], "CriticalAddonsOnly");
                assert!(pod["spec"]["affinity"]["podAntiAffinity"].is_null());
                for flag in [
                    "--lease-duration=20s",
                    "--node-selector=kubernetes.io/os=windows",
                    "--osbuild-label=example.com/osbuild",
                    "--label-prefix=osbuild.example.com",
                    "--force-conflicts",
                    "--dry-run",
                    "--resync-interval=5m",
                    "--concurrency=8",
                    &format!("--lease-namespace={}", env.namespace),
                ] {
                    assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
                }
                let policy = one(&rendered, "NetworkPolicy");
                assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
                assert_eq!(
                    policy["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"],
                    "10.0.0.1/32"
                );
            }
            "default" => {
                assert!(kinds.contains("PodDisruptionBudget"));
                for kind in ["NetworkPolicy", "ServiceMonitor", "PrometheusRule"] {
                    assert!(!kinds.contains(kind), "{kind} is off by default");
                }
            }
            _ => {}
        }
        delete(&text);
    }
    kubectl_with_stdin(&["delete", "namespace", &watched, "--wait=false"], "");
    env.cleanup().await;
}

#[tokio::test]
async fn bad_values_fail_at_helm_install_and_create_nothing() {
    let env = TestEnv::new("helm-bad").await;
    let chart = repo(CHART);
    let chart = chart.to_str().unwrap();
    let cases = [
        ("replicaCount=-1", "/replicaCount"),
        ("replicaCount=\"two\"", "/replicaCount"),
        ("image.pullPolicy=\"Sometimes\"", "/image/pullPolicy"),
        ("image.digest=\"sha256:abc\"", "/image/digest"),
        ("controller.logFormat=\"xml\"", "/controller/logFormat"),
        (
            "controller.resyncInterval=\"0s\"",
            "/controller/resyncInterval",
        ),
        (
            "controller.watchNamespace=\"Not_A_Namespace\"",
            "/controller/watchNamespace",
        ),
        (
            "controller.annotatePods=\"yes\"",
            "/controller/annotatePods",
        ),
        (
            "networkPolicy.apiServer.cidrs=[\"everywhere\"]",
            "/networkPolicy/apiServer/cidrs",
        ),
        ("imagePullSecrets=[\"regcred\"]", "/imagePullSecrets"),
        ("typo=1", "additional properties 'typo'"),
        ("placement.enabled=\"yes\"", "/placement/enabled"),
        ("audit.enabled=\"yes\"", "/audit/enabled"),
        ("audit.interval=\"0s\"", "/audit/interval"),
        (
            "leaderElection.enabled=false",
            "needs leaderElection.enabled",
        ),
    ];
    for (i, (set, expected)) in cases.iter().enumerate() {
        let release = format!(
            "bad-{i}-{}",
            &env.prefix[env.prefix.len().saturating_sub(12)..]
        );
        let (ok, _, stderr) = helm_run(&[
            "install",
            &release,
            chart,
            "--namespace",
            &env.namespace,
            "--set-json",
            set,
        ]);
        assert!(!ok, "helm install --set-json {set} must fail");
        assert!(
            stderr.contains(expected),
            "helm install --set-json {set}: the error names {expected:?}:\n{stderr}"
        );
        let (_, list, _) = helm_run(&["list", "-a", "-q", "--namespace", &env.namespace]);
        assert!(!list.contains(&release), "no release record: {list}");
    }
    // Nothing was created in the namespace (and the positive control below sees what install creates).
    let leftover = kubectl_with_stdin(
        &[
            "get",
            "deployments,serviceaccounts,roles,secrets",
            "-n",
            &env.namespace,
            "-o",
            "name",
        ],
        "",
    );
    assert_eq!(leftover.trim(), "serviceaccount/default", "{leftover}");
    env.cleanup().await;
}

/// Everything of a release's that the API can list: namespaced kinds in `ns`, cluster-scoped kinds, and the
/// release records, by the chart's instance label or helm's owner label.
fn release_objects(release: &str, ns: &str) -> Vec<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut names = Vec::new();
    for (kinds, namespaced) in [
        (
            "deployments,replicasets,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies,leases,configmaps",
            true,
        ),
        ("clusterroles,clusterrolebindings", false),
    ] {
        let mut args = vec!["get", kinds, "-l", &selector, "-o", "name"];
        if namespaced {
            args.extend(["-A"]);
        }
        names.extend(
            kubectl_with_stdin(&args, "")
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty()),
        );
    }
    let records = format!("owner=helm,name={release}");
    names.extend(
        kubectl_with_stdin(
            &["get", "secrets", "-n", ns, "-l", &records, "-o", "name"],
            "",
        )
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty()),
    );
    names
}

#[tokio::test]
async fn helm_install_runs_upgrade_changes_rbac_and_args_uninstall_leaves_nothing() {
    let env = TestEnv::new("helm-install").await;
    let chart = repo(CHART);
    let chart = chart.to_str().unwrap();
    let release = env.prefix.clone();
    let ns = format!("{}-sys", env.prefix);
    let fullname = format!("{release}-osbuild-controller");

    // Placement off: its admission policy would gate the Windows pods of the tests running beside this one
    // on the shared control plane (the chart's policy is dry-run in every_switch_applies_server_side...).
    helm_ok(&[
        "install",
        &release,
        chart,
        "--namespace",
        &ns,
        "--create-namespace",
        "--set",
        "placement.enabled=false",
    ]);
    let status: Value = serde_json::from_str(&helm_ok(&[
        "status",
        &release,
        "--namespace",
        &ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(status["info"]["status"], "deployed");
    assert_eq!(status["version"], 1);
    let notes = status["info"]["notes"].as_str().unwrap_or_default();
    assert!(
        notes.contains(&format!("rollout status deploy/{fullname}")),
        "{notes}"
    );
    let installed = release_objects(&release, &ns);
    for expected in [
        format!("deployment.apps/{fullname}"),
        format!("serviceaccount/{fullname}"),
        format!("clusterrole.rbac.authorization.k8s.io/{fullname}"),
        format!("clusterrolebinding.rbac.authorization.k8s.io/{fullname}"),
        format!("role.rbac.authorization.k8s.io/{fullname}-leader-election"),
        format!("poddisruptionbudget.policy/{fullname}"),
        format!("service/{fullname}"),
    ] {
        assert!(installed.contains(&expected), "{expected} in {installed:?}");
    }

    // The controller, with the chart's ServiceAccount and the Deployment's args, does its job: it leads on
    // the Lease the Role grants and labels a Windows node. (No kubelet runs pods here: the binary runs as a
    // process with the pod's identity.)
    let kubeconfig = std::env::temp_dir().join(format!("{release}.kubeconfig"));
    support::token_kubeconfig(
        &env.client,
        support::kubeconfig(),
        &ns,
        &fullname,
        &kubeconfig,
    )
    .await;
    let deployment: Value = serde_json::from_str(&kubectl_with_stdin(
        &["get", "deployment", &fullname, "-n", &ns, "-o", "json"],
        "",
    ))
    .unwrap();
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args[0], "run");
    let mut flags: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    flags.extend(["--lease-namespace", &ns, "--lease-duration", "5s"]);
    let windows = env.create_windows_node("ws2022", "10.0.20348.2227").await;
    let controller = Controller::spawn_with_kubeconfig(&env, &kubeconfig, &flags);
    controller.wait_ready().await;
    // the chart's controller labels the node
    env.wait_label(&windows, "beta.kubernetes.io/osbuild", "20348")
        .await;
    let lease = kubectl_with_stdin(
        &[
            "get",
            "lease",
            &fullname,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        "",
    );
    assert!(
        !lease.is_empty(),
        "the Lease named after the release has a holder"
    );
    let (_, body) = controller.get("/metrics").await;
    assert!(
        !body.contains("osbuild_watch_errors_total")
            && !body.contains("osbuild_reconcile_errors_total"),
        "{body}\n{}",
        controller.log()
    );
    drop(controller);

    // Upgrade: annotatePods on, with its permission, in one step.
    let patch_pods = access("patch", "", "pods").ns("shop").named("web-0");
    assert!(!allowed(&env.client, &ns, &fullname, &patch_pods).await);
    helm_ok(&[
        "upgrade",
        &release,
        chart,
        "--namespace",
        &ns,
        "--reuse-values",
        "--set",
        "controller.annotatePods=true",
    ]);
    let status: Value = serde_json::from_str(&helm_ok(&[
        "status",
        &release,
        "--namespace",
        &ns,
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(status["version"], 2);
    assert!(allowed(&env.client, &ns, &fullname, &patch_pods).await);
    let args = kubectl_with_stdin(
        &[
            "get",
            "deployment",
            &fullname,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ],
        "",
    );
    assert!(args.contains("--annotate-pods"), "{args}");

    // Uninstall: none of the chart's objects and no release record stay (the Lease the controller made is
    // not the chart's; it goes with the namespace). The positive control is `installed` above.
    helm_ok(&["uninstall", &release, "--namespace", &ns, "--wait"]);
    let left = release_objects(&release, &ns);
    assert!(left.is_empty(), "left after helm uninstall: {left:?}");
    let (_, list, _) = helm_run(&["list", "-a", "-q", "--namespace", &ns]);
    assert!(list.trim().is_empty(), "{list}");
    // Node labels stay on purpose (docs/install.md#uninstalling).
    assert_eq!(
        env.labels(&windows)
            .await
            .get("beta.kubernetes.io/osbuild")
            .map(String::as_str),
        Some("20348")
    );
    kubectl_with_stdin(&["delete", "namespace", &ns, "--wait=false"], "");
    let _ = std::fs::remove_file(&kubeconfig);
    env.cleanup().await;
}

#[test]
fn the_chart_ships_this_version_of_the_controller() {
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo(&format!("{CHART}/Chart.yaml"))).unwrap(),
    )
    .expect("Chart.yaml");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        chart["appVersion"], version,
        "appVersion is the crate's version"
    );
    let images: Value = serde_norway::from_str(
        chart["annotations"]["artifacthub.io/images"]
            .as_str()
            .expect("artifacthub.io/images"),
    )
    .unwrap();
    assert_eq!(
        images[0]["image"],
        format!("ghcr.io/osbuild-controller/osbuild-controller:{version}")
    );
    for key in [
        "artifacthub.io/license",
        "artifacthub.io/links",
        "artifacthub.io/changes",
        "artifacthub.io/category",
    ] {
        assert!(chart["annotations"][key].is_string(), "{key}");
    }
    assert_eq!(chart["annotations"]["artifacthub.io/license"], "Apache-2.0");
}
