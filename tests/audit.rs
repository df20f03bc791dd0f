//! `osbuild-controller audit` against the real control plane and the real registries (images of every
//! shape pushed by crane, tests/registry/fixtures.sh): workloads of each kind, selectors that admit right,
//! wrong and mixed nodes, a tainted pool, a Hyper-V RuntimeClass with a nodeSelector, an unreadable image,
//! and `--if-nodes` turning verdicts around.
//!
//! The in-cluster audit (`run --audit-interval`) runs with the ServiceAccount and RBAC of the manifests
//! (base plus components/audit): a broken workload shows in `osbuild_workload_verdict` and leaves it when
//! fixed (the change triggers the next audit well before its interval).
//!
//! The shared control plane holds other tests' nodes too, so every workload here selects this test's nodes
//! (its run label or its pools), and the audit is scoped to the test's namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use support::{
    Access, Controller, RUN_LABEL, TIMEOUT, TestEnv, access, allowed, eventually,
    kubectl_with_stdin, registries,
};

/// Runs the audit of `namespace` with `extra` flags; returns (exit code, verdict by workload, the report).
fn audit(namespace: &str, extra: &[&str]) -> (i32, BTreeMap<String, Value>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(["audit", "-n", namespace, "-o", "json"])
        .args(["--registry-insecure", registries().plain_host()])
        .args(extra)
        .env("KUBECONFIG", support::kubeconfig())
        .output()
        .expect("run audit");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "audit exited {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("audit -o json prints JSON");
    let rows = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                format!(
                    "{}/{}",
                    w["kind"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                ),
                w.clone(),
            )
        })
        .collect();
    (code, rows, report)
}

fn verdict(rows: &BTreeMap<String, Value>, workload: &str) -> String {
    rows.get(workload)
        .unwrap_or_else(|| panic!("{workload} not in the audit: {:?}", rows.keys()))["verdict"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn apply(yaml: &str) {
    kubectl_with_stdin(&["apply", "-f", "-"], yaml);
}

#[tokio::test]
async fn audit_gives_each_windows_workload_its_verdict_and_plans_upgrades() {
    let env = TestEnv::new("audit").await;
    let (ns, run, prefix) = (env.namespace.as_str(), &env.prefix, &env.prefix);
    let win19 = format!("{prefix}-win19");
    let win22 = format!("{prefix}-win22");
    let ws2019 = env
        .create_node(
            "ws2019",
            "windows",
            "10.0.17763.3887",
            &[("agentpool", &win19)],
        )
        .await;
    let ws2022 = env
        .create_node(
            "ws2022",
            "windows",
            "10.0.20348.2655",
            &[("agentpool", &win22)],
        )
        .await;
    // The win22 pool is tainted, as AKS and EKS Windows pools commonly are.
    Api::<Node>::all(env.client.clone())
        .patch(
            &ws2022,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"taints": [{"key": "os", "value": "windows", "effect": "NoSchedule"}]}})),
        )
        .await
        .unwrap();
    let r = registries();
    let (ltsc2019, ltsc2022, multi) = (
        r.plain("windows/ltsc2019"),
        r.plain("windows/ltsc2022"),
        r.plain("windows/multi"),
    );
    let missing = r.plain("windows/does-not-exist:1.0");
    let linux = r.plain("linux/app:latest");
    let toleration = r#"[{key: os, operator: Equal, value: windows, effect: NoSchedule}]"#;
    let deployment = |ns: &str, name: &str, selector: &str, tolerations: &str, image: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      os: {{name: windows}}
      nodeSelector: {selector}
      tolerations: {tolerations}
      containers: [{{name: app, image: "{image}"}}]
"#
        )
    };
    let all_ours = format!("{{{RUN_LABEL}: {run}}}");
    let pool22 = format!("{{agentpool: {win22}}}");
    // Lands on both pools, runs only on WS2022: at risk on ws2019.
    apply(&deployment(ns, "both", &all_ours, toleration, &ltsc2022));
    // Pinned to the pool that runs it: ok.
    apply(&deployment(ns, "pinned22", &pool22, toleration, &ltsc2022));
    // Tainted out of the only pool it selects: no node admits it.
    apply(&deployment(ns, "no-toleration", &pool22, "[]", &ltsc2022));
    // An image the registry does not have: unknown.
    apply(&deployment(
        ns,
        "unreadable",
        &all_ours,
        toleration,
        &missing,
    ));
    // A Linux workload is not audited.
    apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: linux, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: linux}}}}
  template:
    metadata: {{labels: {{app: linux}}}}
    spec:
      nodeSelector: {{kubernetes.io/os: linux}}
      containers: [{{name: app, image: "{linux}"}}]
"#
    ));
    // A 2019 image pinned to the 2022 pool: broken (process isolation needs the same build).
    apply(&format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: old, namespace: {ns}}}
spec:
  serviceName: old
  selector: {{matchLabels: {{app: old}}}}
  template:
    metadata: {{labels: {{app: old}}}}
    spec:
      nodeSelector: {{kubernetes.io/os: windows, agentpool: {win22}}}
      tolerations: {toleration}
      containers: [{{name: app, image: "{ltsc2019}"}}]
"#
    ));
    // A multi-build index runs on both pools.
    apply(&format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      nodeSelector: {{kubernetes.io/os: windows, {RUN_LABEL}: {run}}}
      tolerations: {toleration}
      containers: [{{name: app, image: "{multi}"}}]
"#
    ));
    // The same 2019 image through a Hyper-V RuntimeClass whose scheduling picks the 2022 pool: ok (an older
    // image runs on a newer host in a utility VM). A CronJob, to audit that kind too.
    let hyperv = format!("{prefix}-hyperv");
    apply(&format!(
        r#"
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {{name: {hyperv}}}
handler: runhcs-wcow-hypervisor
scheduling:
  nodeSelector: {{kubernetes.io/os: windows, agentpool: {win22}}}
  tolerations: {toleration}
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: nightly, namespace: {ns}}}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          runtimeClassName: {hyperv}
          restartPolicy: Never
          containers: [{{name: app, image: "{ltsc2019}"}}]
"#
    ));

    let (code, rows, report) = audit(ns, &[]);
    assert_eq!(code, 1, "not every workload is ok: {report:#}");
    assert_eq!(verdict(&rows, "Deployment/both"), "at-risk");
    assert_eq!(rows["Deployment/both"]["nodes_that_fail"], json!([ws2019]));
    assert_eq!(verdict(&rows, "Deployment/pinned22"), "ok");
    assert_eq!(verdict(&rows, "Deployment/no-toleration"), "broken");
    assert_eq!(verdict(&rows, "Deployment/unreadable"), "unknown");
    assert!(
        rows["Deployment/unreadable"]["detail"]
            .as_str()
            .unwrap()
            .contains("not-found"),
        "{report:#}"
    );
    assert_eq!(verdict(&rows, "StatefulSet/old"), "broken");
    assert_eq!(rows["StatefulSet/old"]["nodes_that_fail"], json!([ws2022]));
    assert_eq!(verdict(&rows, "DaemonSet/agent"), "ok");
    assert_eq!(verdict(&rows, "CronJob/nightly"), "ok");
    assert!(
        !rows.contains_key("Deployment/linux"),
        "Linux workloads are not audited"
    );
    assert_eq!(rows.len(), 7, "{:?}", rows.keys());
    assert_eq!(
        report["workloads"][0]["verdict"], "broken",
        "worst first: {report:#}"
    );

    // Upgrade planning: the 2019 pool moves to Windows Server 2025. The ltsc2022 image runs there, so the
    // at-risk workload becomes ok, and the report names what each broken one needs.
    let to_2025 = format!("agentpool={win19}=10.0.26100.1742");
    let (_, rows, report) = audit(ns, &["--if-nodes", &to_2025]);
    assert_eq!(verdict(&rows, "Deployment/both"), "ok", "{report:#}");
    assert_eq!(verdict(&rows, "StatefulSet/old"), "broken");
    // The 2022 pool moves back to 2019: the pinned 2022 workload breaks, the 2019 one is fixed.
    let to_2019 = format!("agentpool={win22}=10.0.17763.3887");
    let (_, rows, report) = audit(ns, &["--if-nodes", &to_2019]);
    assert_eq!(
        verdict(&rows, "Deployment/pinned22"),
        "broken",
        "{report:#}"
    );
    assert!(
        rows["Deployment/pinned22"]["detail"]
            .as_str()
            .unwrap()
            .contains("an image with a 17763 (ltsc2019) entry would run there"),
        "{report:#}"
    );
    assert_eq!(verdict(&rows, "StatefulSet/old"), "ok");

    // `OSBUILD_AUDIT_SHOW=1` prints the text reports, as docs/audit.md shows them.
    if std::env::var_os("OSBUILD_AUDIT_SHOW").is_some() {
        for extra in [vec![], vec!["--if-nodes", to_2025.as_str()]] {
            let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
                .args([
                    "audit",
                    "-n",
                    ns,
                    "--registry-insecure",
                    registries().plain_host(),
                ])
                .args(&extra)
                .env("KUBECONFIG", support::kubeconfig())
                .output()
                .unwrap();
            eprintln!(
                "$ osbuild-controller audit -n {ns} {}\n{}",
                extra.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    // A namespace whose workloads all run: exit 0, for CI pipelines.
    let healthy = TestEnv::with_client(env.client.clone(), "audit-ok").await;
    apply(&deployment(
        &healthy.namespace,
        "fine",
        &pool22,
        toleration,
        &ltsc2022,
    ));
    let (code, rows, _) = audit(&healthy.namespace, &[]);
    assert_eq!(
        (code, verdict(&rows, "Deployment/fine").as_str()),
        (0, "ok")
    );

    // Bad input: one clear line, exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(["audit", "--if-nodes", "agentpool=win19"])
        .env("KUBECONFIG", support::kubeconfig())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SELECTOR=KERNEL_VERSION"));

    let _ = kubectl_with_stdin(&["delete", "runtimeclass", &hyperv], "");
    healthy.cleanup().await;
    env.cleanup().await;
}

/// The base manifests plus components/audit, RBAC and ServiceAccount only, under this test's name prefix and
/// namespace (so the grants stay the test's own). Returns the rendered YAML and the ServiceAccount's name.
fn audit_rbac(prefix: &str, namespace: &str) -> (String, String) {
    // kustomize takes only relative paths to other kustomizations: a directory two levels below the repo.
    // Two passes, as tests/manifests.rs does: render base and component, then rename (a single pass would
    // leave the bindings' subjects at the base's names).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("{prefix}-audit-rbac"));
    std::fs::create_dir_all(dir.join("renamed")).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        "resources:\n  - ../../manifests/base\ncomponents:\n  - ../../manifests/components/audit\n",
    )
    .unwrap();
    let shipped = kubectl_with_stdin(&["kustomize", dir.to_str().unwrap()], "");
    std::fs::write(dir.join("renamed/rendered.yaml"), shipped).unwrap();
    std::fs::write(
        dir.join("renamed/kustomization.yaml"),
        format!("resources:\n  - rendered.yaml\nnamePrefix: {prefix}-\nnamespace: {namespace}\n"),
    )
    .unwrap();
    let rendered = kubectl_with_stdin(&["kustomize", dir.join("renamed").to_str().unwrap()], "");
    let _ = std::fs::remove_dir_all(&dir);
    let keep = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"];
    let objects: Vec<Value> = rendered
        .split("\n---\n")
        .filter_map(serde_yaml_doc)
        .filter(|o| keep.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        objects.len(),
        5,
        "SA, base and audit roles and bindings: {objects:?}"
    );
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    (list, format!("{prefix}-osbuild-controller"))
}

fn serde_yaml_doc(doc: &str) -> Option<Value> {
    let value: Value = serde_norway::from_str(doc).ok()?;
    value.is_object().then_some(value)
}

#[tokio::test]
async fn in_cluster_audit_exports_a_broken_workload_until_it_is_fixed() {
    let env = TestEnv::new("audit-loop").await;
    let (ns, run) = (env.namespace.as_str(), env.prefix.as_str());
    env.create_node("ws2019", "windows", "10.0.17763.3887", &[])
        .await;
    let r = registries();
    let (ltsc2019, ltsc2022) = (r.plain("windows/ltsc2019"), r.plain("windows/ltsc2022"));

    // The shipped RBAC: the base's ClusterRole plus components/audit's, bound to a ServiceAccount.
    let system = format!("{run}-sys");
    kubectl_with_stdin(&["create", "namespace", &system], "");
    let (rbac, sa) = audit_rbac(run, &system);
    kubectl_with_stdin(&["apply", "-f", "-"], &rbac);
    // Read-only: it may list and watch workloads and get a pull secret by name, never list or watch
    // secrets or change workloads (the positive controls are the grants the run below relies on).
    let may = |a: Access<'static>| {
        let (client, system, sa) = (env.client.clone(), system.clone(), sa.clone());
        async move { allowed(&client, &system, &sa, &a).await }
    };
    eventually("the RBAC grants in effect", TIMEOUT, || async {
        may(access("list", "apps", "deployments"))
            .await
            .then_some(())
    })
    .await;
    assert!(may(access("get", "", "secrets").ns("shop").named("regcred")).await);
    assert!(!may(access("list", "", "secrets")).await);
    assert!(
        !may(access("patch", "apps", "deployments")
            .ns("shop")
            .named("web"))
        .await
    );
    assert!(!may(access("watch", "", "secrets")).await);
    assert!(!may(access("watch", "node.k8s.io", "runtimeclasses")).await);
    let kubeconfig = std::env::temp_dir().join(format!("{run}-audit.kubeconfig"));
    support::token_kubeconfig(
        &env.client,
        support::kubeconfig(),
        &system,
        &sa,
        &kubeconfig,
    )
    .await;

    let deployment = |name: &str, image: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      os: {{name: windows}}
      nodeSelector: {{{RUN_LABEL}: {run}}}
      containers: [{{name: app, image: "{image}"}}]
"#
        )
    };
    // Only a 2019 node: the ltsc2022 image runs nowhere it can land (broken); the ltsc2019 one is ok.
    apply(&deployment("web", &ltsc2022));
    apply(&deployment("fine", &ltsc2019));

    let controller = Controller::spawn_with_kubeconfig(
        &env,
        &kubeconfig,
        &[
            // Two minutes: the fix below can only show within the 30 s of `eventually` because the change
            // brings the next audit forward (a tenth of the interval after the first), not by the period.
            "--audit-interval",
            "2m",
            "--namespace",
            ns,
            "--placement=false",
            "--registry-insecure",
            r.plain_host(),
        ],
    );
    controller.wait_ready().await;
    let web = [
        ("namespace", ns),
        ("kind", "Deployment"),
        ("name", "web"),
        ("verdict", "broken"),
    ];
    eventually("the broken workload in the metrics", TIMEOUT, || async {
        let scrape = controller.scrape().await;
        (scrape.value("osbuild_workload_verdict", &web) == Some(1.0)
            && scrape.value("osbuild_workloads", &[("verdict", "broken")]) == Some(1.0)
            && scrape.value("osbuild_workloads", &[("verdict", "ok")]) == Some(1.0))
        .then_some(())
    })
    .await;
    let scrape = controller.scrape().await;
    assert_eq!(
        scrape.sum_where("osbuild_workload_verdict", |_| true),
        1.0,
        "only the broken workload has a series of its own, not the ok one"
    );

    // Fixed: the 2019 image. The Deployment's change triggers an audit; the series goes, and it counts as ok.
    apply(&deployment("web", &ltsc2019));
    eventually(
        "the fixed workload gone from the metrics",
        TIMEOUT,
        || async {
            let scrape = controller.scrape().await;
            (scrape.value("osbuild_workload_verdict", &web).is_none()
                && scrape.value("osbuild_workloads", &[("verdict", "ok")]) == Some(2.0)
                && scrape.value("osbuild_workloads", &[("verdict", "broken")]) == Some(0.0))
            .then_some(())
        },
    )
    .await;
    let scrape = controller.scrape().await;
    assert!(
        scrape
            .value("osbuild_audit_runs_total", &[("outcome", "ok")])
            .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(
        scrape.value("osbuild_audit_runs_total", &[("outcome", "error")]),
        None,
        "the shipped RBAC lets every list through; log:\n{}",
        controller.log()
    );
    assert_eq!(
        scrape.sum_where("osbuild_reconcile_errors_total", |_| true),
        0.0,
        "log:\n{}",
        controller.log()
    );

    drop(controller);
    kubectl_with_stdin(&["delete", "--wait=false", "-f", "-"], &rbac);
    kubectl_with_stdin(&["delete", "namespace", &system, "--wait=false"], "");
    env.cleanup().await;
}

/// Without the audit's rights (the base's alone), the in-cluster audit cannot list RuntimeClasses or
/// workloads: each run is counted as an error (`forbidden`), no verdict is exported, and the controller
/// stays ready (the audit is not part of readiness). The positive control is the test above, with
/// components/audit.
#[tokio::test]
async fn in_cluster_audit_without_its_rights_reports_forbidden_and_stays_ready() {
    let env = TestEnv::new("audit-norbac").await;
    let kubeconfig = env.service_account_kubeconfig("base-only").await;
    let role = env
        .grant(
            "base",
            "base-only",
            json!([
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch"]}
            ]),
        )
        .await;
    let controller = Controller::spawn_with_kubeconfig(
        &env,
        &kubeconfig,
        &[
            "--audit-interval",
            "1s",
            "--placement=false",
            "--registry-insecure",
            registries().plain_host(),
        ],
    );
    controller.wait_ready().await;
    eventually("failed audits counted as forbidden", TIMEOUT, || async {
        let scrape = controller.scrape().await;
        (scrape
            .value("osbuild_audit_runs_total", &[("outcome", "error")])
            .unwrap_or(0.0)
            >= 2.0
            && scrape
                .value(
                    "osbuild_reconcile_errors_total",
                    &[("controller", "audit"), ("category", "forbidden")],
                )
                .unwrap_or(0.0)
                >= 2.0)
            .then_some(())
    })
    .await;
    let scrape = controller.scrape().await;
    assert_eq!(
        scrape.value("osbuild_audit_runs_total", &[("outcome", "ok")]),
        None
    );
    assert!(
        scrape.families("osbuild_workload").is_empty(),
        "no verdicts without an audit: {:?}",
        scrape.families("osbuild_workload")
    );
    assert_eq!(controller.get("/readyz").await.0, 200, "still ready");
    assert_eq!(controller.get("/healthz").await.0, 200, "still alive");
    drop(controller);
    env.revoke(&role).await;
    env.cleanup().await;
}
