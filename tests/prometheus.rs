//! The shipped Prometheus objects and alerts, end to end, on the real control plane:
//! - the Prometheus Operator's CRDs (tests/helm/crds.sh, from the operator's Go types) are applied and the
//!   API server validates our ServiceMonitor and PrometheusRule (manifests/prometheus) against them;
//! - a real Prometheus server (Debian's package, scripts/prometheus-bin) scrapes the real controller's
//!   /metrics and loads the rules extracted from our PrometheusRule (manifests/prometheus/extract-rules.sh,
//!   as a Prometheus without the Operator gets them). Only the test's copy of the rules gets a short `for:`;
//!   alert states are read from Prometheus' HTTP API (/api/v1/alerts): pending, then firing, then resolved.
//! - every panel query of dashboards/osbuild-controller.json returns series in the scenario that feeds it,
//!   and its data is drawn to docs/dashboard/<panel>.png.
//!
//! Fails, never skips, when Prometheus cannot be had.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{
    Controller, PLACEMENT_GATE, RUN_LABEL, TestEnv, built_by, client_from, ensure_monitoring_crds,
    eventually, free_port, http_get, kubectl_with_stdin, placement_kubeconfig, registries,
};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The `for:` of every alert in the test's copy of the rules (the shipped file says minutes). Long enough
/// against the 1s evaluation interval that the pending state is seen by a poller.
const TEST_FOR: &str = "5s";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

// ---------------------------------------------------------------- part 1: the objects, validated

/// `kubectl kustomize manifests/prometheus`, moved into `namespace`.
fn our_prometheus_objects(namespace: &str) -> Vec<Value> {
    let dir = repo("manifests/prometheus");
    let text = kubectl_with_stdin(&["kustomize", dir.to_str().unwrap()], "");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("kustomize prints valid YAML"))
        .filter(|v| !v.is_null())
        .map(|mut o| {
            o["metadata"]["namespace"] = json!(namespace);
            o
        })
        .collect()
}

#[tokio::test]
async fn crds_validate_and_accept_our_servicemonitor_and_prometheusrule() {
    let env = TestEnv::new("prom-crds").await;
    ensure_monitoring_crds();
    let objects = our_prometheus_objects(&env.namespace);
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");

    // Positive control first: the API server checks the CRD schema, so a PrometheusRule with a `for:`
    // that is no Prometheus duration is refused.
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .unwrap();
    let mut broken = rule.clone();
    broken["metadata"]["name"] = json!("broken");
    broken["spec"]["groups"][0]["rules"][0]["for"] = json!("five minutes");
    let (ok, text) = kubectl_result(&["apply", "--server-side", "-f", "-"], &broken.to_string());
    assert!(
        !ok,
        "a PrometheusRule with for: \"five minutes\" was accepted: {text}"
    );
    assert!(text.contains("spec.groups[0].rules[0].for"), "{text}");

    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let applied: Value = serde_json::from_str(&kubectl_with_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=osbuild-prometheus-test",
                "-o",
                "json",
                "-f",
                "-",
            ],
            &object.to_string(),
        ))
        .unwrap();
        // What the API server stored (after pruning unknown fields) is what we shipped.
        assert_eq!(applied["spec"], object["spec"], "{kind} spec as stored");
    }
    let alerts = rule["spec"]["groups"][0]["rules"].as_array().unwrap().len();
    assert!(alerts >= 8, "{alerts} alerts");
    env.cleanup().await;
}

// ---------------------------------------------------------------- part 2: a real Prometheus

/// A Prometheus server of the test's own, on loopback, scraping the targets the test names (file_sd, so
/// a restarted controller on a new port is found; the job is "osbuild-controller" as the Service's
/// ServiceMonitor would name it), evaluating the test's copy of our rules every second.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

/// Our rules as extract-rules.sh gives them to a Prometheus without the Operator, with every `for:`
/// shortened to TEST_FOR. Returns (rules file, number of alerts).
fn test_rules() -> (String, usize) {
    let out = Command::new(repo("manifests/prometheus/extract-rules.sh"))
        .arg(repo("manifests/prometheus/prometheusrule.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped = String::from_utf8(out.stdout).unwrap();
    let mut rewritten = 0;
    let rules: Vec<String> = shipped
        .lines()
        .map(|line| {
            let body = line.trim_start();
            if body.starts_with("for: ") {
                rewritten += 1;
                format!("{}for: {TEST_FOR}", &line[..line.len() - body.len()])
            } else {
                line.to_owned()
            }
        })
        .collect();
    let alerts = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert: "))
        .count();
    assert_eq!(rewritten, alerts, "one for: per alert");
    (rules.join("\n") + "\n", alerts)
}

impl Prometheus {
    async fn start(name: &str) -> Self {
        let bin = built_by("scripts/prometheus-bin", &["prometheus"]);
        let addr = format!("127.0.0.1:{}", free_port());
        let dir = std::env::temp_dir().join(format!("osbuild-prometheus-{name}-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let (rules, alerts) = test_rules();
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        std::fs::write(dir.join("targets.json"), "[]").unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules}]\n\
                 scrape_configs:\n\
                 - job_name: osbuild-controller\n\
                 \x20 honor_labels: true\n\
                 \x20 file_sd_configs: [{{files: [{targets}], refresh_interval: 1s}}]\n",
                rules = dir.join("rules.yaml").display(),
                targets = dir.join("targets.json").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let prometheus = Self { child, addr, dir };
        let loaded = eventually("Prometheus ready with our rules", TIMEOUT, || async {
            let (status, _) = http_get(&prometheus.addr, "/-/ready").await.ok()?;
            if status != 200 {
                return None;
            }
            let rules = prometheus.api("/api/v1/rules?type=alert").await;
            let n = rules["data"]["groups"]
                .as_array()?
                .iter()
                .map(|g| g["rules"].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            (n > 0).then_some(n)
        })
        .await;
        assert_eq!(
            loaded, alerts,
            "every alert of the PrometheusRule is loaded"
        );
        prometheus
    }

    /// Points the scrape job at these controllers (written atomically; file_sd picks it up).
    fn set_targets(&self, addrs: &[&str]) {
        let tmp = self.dir.join("targets.json.tmp");
        std::fs::write(&tmp, json!([{"targets": addrs}]).to_string()).unwrap();
        std::fs::rename(tmp, self.dir.join("targets.json")).unwrap();
    }

    async fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.addr, path)
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}\n{}", self.log()));
        let value: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus {path}: {status} {e}: {body}"));
        assert_eq!(value["status"], "success", "{path}: {body}");
        value
    }

    async fn query(&self, promql: &str) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let answer = self.api(&format!("/api/v1/query?query={q}")).await;
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn query_range(&self, promql: &str, start: f64, end: f64) -> Vec<Value> {
        let q: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let answer = self
            .api(&format!(
                "/api/v1/query_range?query={q}&start={start:.3}&end={end:.3}&step=1"
            ))
            .await;
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The state ("pending", "firing") of the alert whose labels include `labels`, if it is active.
    async fn alert_state(&self, name: &str, labels: &[(&str, &str)]) -> Option<String> {
        let answer = self.api("/api/v1/alerts").await;
        answer["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == name
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            })
            .and_then(|a| a["state"].as_str().map(str::to_owned))
    }

    /// Waits until the alert fires, and asserts it was pending before (the `for:` is honoured).
    async fn wait_pending_then_firing(&self, name: &str, labels: &[(&str, &str)]) {
        let mut seen = Vec::new();
        let polled = tokio::time::timeout(TIMEOUT, async {
            loop {
                let state = self.alert_state(name, labels).await;
                if let Some(state) = state {
                    if seen.last() != Some(&state) {
                        seen.push(state.clone());
                    }
                    if state == "firing" {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            polled.is_ok(),
            "{name} {labels:?} did not fire; states seen {seen:?}; alerts: {}\nPrometheus log:\n{}",
            self.api("/api/v1/alerts").await,
            self.log()
        );
        assert_eq!(seen, ["pending", "firing"], "{name} {labels:?}");
    }

    /// Waits until the (firing) alert is no longer active: resolved.
    async fn wait_resolved(&self, name: &str, labels: &[(&str, &str)]) {
        assert_eq!(
            self.alert_state(name, labels).await.as_deref(),
            Some("firing"),
            "{name} fires before it can resolve"
        );
        eventually(&format!("{name} {labels:?} resolved"), TIMEOUT, || async {
            self.alert_state(name, labels).await.is_none().then_some(())
        })
        .await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A real message of this variant of the mismatch (its source URL is in tests/data/error_messages.json).
fn real_message(variant: &str) -> String {
    let cases: Vec<Value> = serde_json::from_str(include_str!("data/error_messages.json")).unwrap();
    let case = cases
        .into_iter()
        .find(|c| c["os_mismatch"] == true && c["variant"] == variant)
        .unwrap_or_else(|| panic!("a real {variant} message"));
    assert!(case["source"].as_str().unwrap().starts_with("https://"));
    case["message"].as_str().unwrap().to_owned()
}

/// `seconds_ago` before now, in whole seconds as the API server keeps it (RFC 3339).
fn time_ago(seconds_ago: i64) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(now - seconds_ago)
        .unwrap()
        .to_string()
}

/// A Docker-era crash loop whose failed start finished `finished` (the detection latency starts there).
fn crash_loop(image: &str, message: &str, finished: &str) -> Value {
    json!({"containerStatuses": [{"name": "app", "image": image, "imageID": "", "ready": false, "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
        "lastState": {"terminated": {"reason": "ContainerCannotRun", "exitCode": 128, "message": message,
                                     "startedAt": "2026-11-23T00:00:00Z", "finishedAt": finished}}}]})
}

/// A pull that fails (`ErrImagePull`, no time of its own) since the containers stopped being ready at `since`.
fn pull_failing(image: &str, message: &str, since: &str) -> Value {
    json!({"phase": "Pending",
        "conditions": [{"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": since}],
        "containerStatuses": [{"name": "app", "image": image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": message}}}]})
}

fn running(image: &str) -> Value {
    json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": image, "imageID": "", "ready": true,
        "restartCount": 3, "state": {"running": {"startedAt": "2026-11-23T01:00:00Z"}}}]})
}

async fn wait_scraped(prometheus: &Prometheus, addr: &str) {
    let query = format!(r#"up{{job="osbuild-controller",instance="{addr}"}} == 1"#);
    eventually(&format!("Prometheus scrapes {addr}"), TIMEOUT, || async {
        (!prometheus.query(&query).await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn mismatch_unlabelled_node_and_absent_controller_fire_and_resolve() {
    let env = TestEnv::new("prom-alerts").await;
    // Kernel versions: the WS2016 form from kubernetes/kubernetes#50396-era kubelets (tests/nodes.rs), and
    // a kubelet 1.9.1 GetVersion bug's value (acs-engine#2094), which cannot be read.
    let node = env
        .create_windows_node(
            "ws2016",
            "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
        )
        .await;
    let bad = env.create_windows_node("bad", "6.2.09200.192").await;
    env.create_windows_node("ws2022", "10.0.20348.2227").await;
    let controller = Controller::start(&env, &[]).await;
    let prometheus = Prometheus::start(&env.prefix).await;
    prometheus.set_targets(&[&controller.metrics_addr]);
    wait_scraped(&prometheus, &controller.metrics_addr).await;
    let started = unix_now();

    // An unlabelled node.
    let unparseable = [("reason", "unparseable")];
    prometheus
        .wait_pending_then_firing("OSBuildNodesUnlabelled", &unparseable)
        .await;

    // Pods flagged with the mismatch, in two of its variants: a crash loop whose failed start finished 2 s
    // ago (Docker's 0xc0370101), and a pull refused for the host's build since 3 s ago (no matching manifest).
    let image = "microsoft/windowsservercore:10.0.14393.1944";
    for name in ["web", "api"] {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": image}]}
        }))
        .unwrap();
        env.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }
    env.set_pod_status(
        "web",
        crash_loop(image, &real_message("hcs-0xc0370101"), &time_ago(2)),
    )
    .await;
    env.set_pod_status(
        "api",
        pull_failing(
            image,
            &real_message("pull-no-matching-manifest"),
            &time_ago(3),
        ),
    )
    .await;
    let mismatch = |pod| {
        [
            ("namespace", env.namespace.as_str()),
            ("pod", pod),
            ("container", "app"),
            ("node", node.as_str()),
        ]
    };
    let (web, api) = (mismatch("web"), mismatch("api"));
    tokio::join!(
        prometheus.wait_pending_then_firing("OSBuildPodOSMismatch", &web),
        prometheus.wait_pending_then_firing("OSBuildPodOSMismatch", &api),
    );
    // Each variant is counted, and both episodes are timed from their status' times: the latency is at
    // least the 2 s since the crash loop's failed start, within the test's run.
    let ns = &env.namespace;
    for variant in ["hcs-0xc0370101", "pull-no-matching-manifest"] {
        let q = format!(
            r#"osbuild_pod_os_mismatch_detections_total{{namespace="{ns}",variant="{variant}"}} == 1"#
        );
        assert_eq!(prometheus.query(&q).await.len(), 1, "{q}");
    }
    for (q, what) in [
        (
            "osbuild_pod_os_mismatch_detection_latency_seconds_count == 2",
            "two episodes timed",
        ),
        (
            r#"osbuild_pod_os_mismatch_detection_latency_seconds_bucket{le="1"} == 0"#,
            "none under 1 s",
        ),
    ] {
        assert_eq!(prometheus.query(q).await.len(), 1, "{what}: {q}");
    }
    dashboard::check(&prometheus, dashboard::MAIN).await;

    // Recovery resolves each.
    env.set_pod_status("web", running(image)).await;
    env.set_pod_status("api", running(image)).await;
    tokio::join!(
        prometheus.wait_resolved("OSBuildPodOSMismatch", &web),
        prometheus.wait_resolved("OSBuildPodOSMismatch", &api),
    );
    env.set_kernel_version(&bad, "10.0.17763.3887").await;
    prometheus
        .wait_resolved("OSBuildNodesUnlabelled", &unparseable)
        .await;
    // The panels over the whole scenario, recovery (and the fixed node's label write) included.
    dashboard::draw(&prometheus, started, dashboard::MAIN).await;

    // A stopped controller: nothing of the job is up.
    // A stopped controller: its target is down (the replica alert, by instance) and nothing of the job is
    // up (the absent alert). Both go pending at the same evaluation, so both are watched at once.
    let old = controller.metrics_addr.clone();
    controller.kill();
    let job = [("job", "osbuild-controller")];
    let replica = [("instance", old.as_str())];
    tokio::join!(
        prometheus.wait_pending_then_firing("OSBuildControllerAbsent", &job),
        prometheus.wait_pending_then_firing("OSBuildControllerReplicaDown", &replica),
    );
    // Recovery: a new process (as a Deployment would start) takes the old one's place as the target.
    let again = Controller::start(&env, &[]).await;
    prometheus.set_targets(&[&again.metrics_addr]);
    tokio::join!(
        prometheus.wait_resolved("OSBuildControllerAbsent", &job),
        prometheus.wait_resolved("OSBuildControllerReplicaDown", &replica),
    );

    // Every rule evaluated without error all along (a PromQL error at run time, such as a many-to-many
    // match, would show here and never fire).
    let rules = prometheus.api("/api/v1/rules").await;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    drop(again);
    env.cleanup().await;
}

/// The node label every Windows node gets (DOMAIN.md).
const OSBUILD: &str = "beta.kubernetes.io/osbuild";

#[tokio::test]
async fn no_leader_then_label_conflict_fire_and_resolve() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Patch, PatchParams};
    let env = TestEnv::new("prom-leader").await;
    let node = env.create_windows_node("win", "10.0.17763.3887").await;
    // Someone labelled the node by hand, with another value, before the controller ran.
    env.nodes()
        .patch(
            &node,
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Node",
                                  "metadata": {"name": node, "labels": {OSBUILD: "wrong"}}})),
        )
        .await
        .unwrap();
    // And another identity holds the controller's Lease for an hour: our replica runs but does not lead.
    let lease_name = format!("{}-lease", env.prefix);
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.namespace);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": lease_name},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                 "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let controller = Controller::start(
        &env,
        &[
            "--leader-elect",
            "--lease-name",
            &lease_name,
            "--lease-namespace",
            &env.namespace,
            "--lease-duration",
            "3s",
        ],
    )
    .await;
    let prometheus = Prometheus::start(&env.prefix).await;
    prometheus.set_targets(&[&controller.metrics_addr]);
    wait_scraped(&prometheus, &controller.metrics_addr).await;

    prometheus
        .wait_pending_then_firing("OSBuildControllerNoLeader", &[])
        .await;
    // The other holder goes away: our replica takes the Lease.
    leases
        .delete(&lease_name, &DeleteParams::default())
        .await
        .unwrap();
    prometheus
        .wait_resolved("OSBuildControllerNoLeader", &[])
        .await;

    // As the leader it applies its labels and meets the other field manager's value: a conflict.
    let job = [("job", "osbuild-controller")];
    prometheus
        .wait_pending_then_firing("OSBuildNodeLabelConflict", &job)
        .await;
    // The other manager gives the label up; the controller sets it and the conflict is over.
    env.nodes()
        .patch(
            &node,
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})),
        )
        .await
        .unwrap();
    prometheus
        .wait_resolved("OSBuildNodeLabelConflict", &job)
        .await;
    env.wait_label(&node, OSBUILD, "17763").await;
    drop(controller);
    env.cleanup().await;
}

#[tokio::test]
async fn broken_watch_fires_watch_down_until_rbac_is_granted() {
    let env = TestEnv::new("prom-watch").await;
    let kubeconfig = env.service_account_kubeconfig("no-rights").await;
    // A Windows node the controller will want to label (with read rights only, the apply is refused).
    env.create_windows_node("ws2022", "10.0.20348.2227").await;
    let controller = Controller::spawn_with_kubeconfig(&env, &kubeconfig, &[]);
    let prometheus = Prometheus::start(&env.prefix).await;
    prometheus.set_targets(&[&controller.metrics_addr]);
    wait_scraped(&prometheus, &controller.metrics_addr).await;
    let started = unix_now();

    let nodes = [("resource", "nodes")];
    prometheus
        .wait_pending_then_firing("OSBuildControllerWatchDown", &nodes)
        .await;

    // Granting the watchers' read permissions heals the watch without a restart.
    let role_name = env
        .grant("read", "no-rights", json!([
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["get", "list", "watch"]}
        ]))
        .await;
    prometheus
        .wait_resolved("OSBuildControllerWatchDown", &nodes)
        .await;
    // Read but not write: the label apply fails as forbidden, which the reconcile-errors panel shows.
    eventually("a forbidden label apply is counted", TIMEOUT, || async {
        // Two samples at least, so the panel's rate() has something to work on.
        let q = r#"count_over_time(osbuild_reconcile_errors_total{controller="node-controller",category="forbidden"}[10s]) > 1"#;
        (!prometheus.query(q).await.is_empty()).then_some(())
    })
    .await;
    // The reconcile-errors alert fires on them. (It would resolve only once its 5-minute increase() window
    // has no error in it; the test shortens `for:` only, not windows, so it does not wait for that.)
    prometheus
        .wait_pending_then_firing(
            "OSBuildControllerReconcileErrors",
            &[("controller", "node-controller"), ("category", "forbidden")],
        )
        .await;
    dashboard::check_and_draw(&prometheus, started, dashboard::WATCH).await;
    env.revoke(&role_name).await;
    drop(controller);
    env.cleanup().await;
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// dashboards/osbuild-controller.json, evaluated against the real Prometheus and drawn.
mod dashboard {
    use super::{Prometheus, TIMEOUT, repo, unix_now};
    use plotters::prelude::*;
    use serde_json::Value;

    /// Which end-to-end scenario feeds each panel (by title): the main one (nodes, mismatches, controller),
    /// the broken watch (watch errors, and reconcile errors from a controller that may read but not write),
    /// the in-cluster audit, and placement (on the placement control plane).
    pub const MAIN: &[&str] = &[
        "Windows nodes by build and release",
        "Unlabelled Windows nodes and why",
        "Label writes and conflicts",
        "Pods failing with the OS-version mismatch, by namespace and variant",
        "Mismatch episodes detected, by namespace and variant",
        "Mismatch detection latency",
        "Node reconcile latency",
        "Leader and scrape health",
    ];
    pub const WATCH: &[&str] = &["Reconcile errors by loop and category", "Watch health"];
    pub const AUDIT: &[&str] = &[
        "Windows workloads by audit verdict",
        "Workloads at risk or broken",
        "In-cluster audits by outcome",
        "Age of the audit's verdicts",
    ];
    pub const PLACEMENT: &[&str] = &[
        "Gated pods released, by outcome",
        "Gate-to-placed latency",
        "Pods gated past the placement deadline",
        "Image reads by outcome, and the registry cache",
        "Registry request latency",
    ];

    pub fn panels() -> Vec<Value> {
        let text = std::fs::read_to_string(repo("dashboards/osbuild-controller.json")).unwrap();
        let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
        dashboard["panels"].as_array().unwrap().clone()
    }

    fn panel(title: &str) -> Value {
        panels()
            .into_iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"))
    }

    fn queries(panel: &Value) -> Vec<String> {
        panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| promql(t["expr"].as_str().unwrap()))
            .collect()
    }

    /// A Grafana query as Prometheus gets it: the job variable set to our job, Grafana's intervals fixed.
    pub fn promql(expr: &str) -> String {
        expr.replace("$job", "osbuild-controller")
            .replace("$__rate_interval", "10s")
            .replace("$__range", "10m")
    }

    /// File name of a panel's PNG: its title, lower case, words joined by dashes.
    pub fn file_name(title: &str) -> String {
        let words: Vec<String> = title
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        format!("{}.png", words.join("-"))
    }

    /// Every query of the named panels returns series now.
    pub async fn check(prometheus: &Prometheus, titles: &[&str]) {
        for title in titles {
            for query in queries(&panel(title)) {
                let series = prometheus.query(&query).await;
                assert!(
                    !series.is_empty(),
                    "panel {title:?} query {query} returns no series"
                );
            }
        }
    }

    /// Each query's series since `since`, as (seconds since `since`, value) points, NaN left out (a quantile
    /// of no observations).
    async fn lines(prometheus: &Prometheus, query: &str, since: f64) -> Vec<Vec<(f64, f64)>> {
        prometheus
            .query_range(query, since, unix_now())
            .await
            .iter()
            .map(|s| {
                s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| Some((v[0].as_f64()? - since, v[1].as_str()?.parse().ok()?)))
                    .filter(|(_, y): &(f64, f64)| y.is_finite())
                    .collect::<Vec<_>>()
            })
            .filter(|points| !points.is_empty())
            .collect()
    }

    /// Each named panel's data since `since`, drawn to target/dashboard/<panel>.png, or to
    /// docs/dashboard/<panel>.png with `OSBUILD_UPDATE_DOCS=1` (so a test run leaves the work tree as it found
    /// it). Every query must have had a value (not only NaN) in that time: a picture with no line is a defect.
    pub async fn draw(prometheus: &Prometheus, since: f64, titles: &[&str]) {
        // A few seconds of the final state (after the recovery) in every picture.
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        for title in titles {
            let mut all = Vec::new();
            for query in queries(&panel(title)) {
                // A rate needs two scrapes after the change it shows: give the last one a moment.
                let found = super::eventually(
                    &format!("panel {title:?} query {query} has a value since the scenario began"),
                    TIMEOUT,
                    || async {
                        let lines = lines(prometheus, &query, since).await;
                        (!lines.is_empty()).then_some(lines)
                    },
                )
                .await;
                all.extend(found);
            }
            let dir = if std::env::var_os("OSBUILD_UPDATE_DOCS").is_some() {
                repo("docs/dashboard")
            } else {
                repo("target/dashboard")
            };
            std::fs::create_dir_all(&dir).expect("the PNG directory");
            draw_lines(&dir.join(file_name(title)), &all, unix_now() - since);
        }
    }

    pub async fn check_and_draw(prometheus: &Prometheus, since: f64, titles: &[&str]) {
        check(prometheus, titles).await;
        draw(prometheus, since, titles).await;
    }

    /// The series as lines, one colour each, on a white background with a frame and four grid lines. No
    /// text: plotters' text needs system fonts; docs/dashboard.md says what each picture shows.
    /// x runs from the scenario's start to `x_max` (seconds), the end of the queried range, so a series
    /// that ended before it (a recovered pod) is seen to end.
    fn draw_lines(path: &std::path::Path, lines: &[Vec<(f64, f64)>], x_max: f64) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let all = lines.iter().flatten();
        let x_max = all.clone().map(|p| p.0).fold(x_max.max(1.0), f64::max);
        let y_max = all.clone().map(|p| p.1).fold(0.0, f64::max);
        let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
        let root = BitMapBackend::new(path, (640, 240)).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .unwrap();
        for i in 0..=4 {
            let y = y_max * f64::from(i) / 4.0;
            chart
                .draw_series(LineSeries::new(
                    [(0.0, y), (x_max, y)],
                    &RGBColor(220, 220, 220),
                ))
                .unwrap();
        }
        for x in [0.0, x_max] {
            chart
                .draw_series(LineSeries::new(
                    [(x, 0.0), (x, y_max)],
                    &RGBColor(160, 160, 160),
                ))
                .unwrap();
        }
        for (i, points) in lines.iter().enumerate() {
            let colour = Palette99::pick(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour))
                .unwrap();
        }
        root.present().unwrap();
    }

    #[test]
    fn every_panel_is_fed_by_a_scenario() {
        let titles: Vec<String> = panels()
            .iter()
            .map(|p| p["title"].as_str().unwrap().to_owned())
            .collect();
        let mut fed: Vec<&str> = [MAIN, WATCH, AUDIT, PLACEMENT].concat();
        fed.sort_unstable();
        let mut all: Vec<&str> = titles.iter().map(String::as_str).collect();
        all.sort_unstable();
        assert_eq!(all, fed);
        for panel in panels() {
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{}", panel["title"]);
            for t in targets {
                assert!(
                    t["expr"].as_str().unwrap().contains("osbuild_")
                        || t["expr"].as_str().unwrap().contains("up{")
                );
            }
        }
    }

    /// A count over the range of `counter` as the dashboard writes it (docs/dashboard.md): a series that did
    /// not exist a range ago counts from 0, an older one by its increase.
    fn count_over_range(counter: &str) -> String {
        let series = format!("{counter}{{job=~\"$job\"}}");
        format!("(increase({series}[$__range]) and {series} offset $__range) or {series}")
    }

    /// Every count of a counter over the range uses that form (histogram buckets, which exist from the start,
    /// excepted): a plain `increase()` misses the first event of each new series.
    #[test]
    fn counts_over_the_range_count_new_series_from_zero() {
        let mut counted = 0;
        for panel in panels() {
            for t in panel["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("increase(") {
                    let counter: String = expr[i + "increase(".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if counter.ends_with("_bucket") {
                        continue;
                    }
                    assert!(
                        expr.contains(&count_over_range(&counter)),
                        "panel {}: {expr}",
                        panel["title"]
                    );
                    counted += 1;
                }
            }
        }
        assert!(counted >= 7, "{counted}");
    }

    /// That form, evaluated by Prometheus' own engine (promtool's unit tests, at a chosen time): an old series
    /// counts as plain `increase()` does, and a series born within the range with its first event counts 1
    /// where `increase()` says 0.
    #[test]
    fn a_count_over_the_range_includes_a_new_series_first_event() {
        let promtool = super::built_by("scripts/prometheus-bin", &["promtool"]);
        let counter = "osbuild_placements_total";
        let dashboard = promql(&format!("sum by (outcome) ({})", count_over_range(counter)));
        let plain = promql(&format!(
            "sum by (outcome) (increase({counter}{{job=~\"$job\"}}[$__range]))"
        ));
        let series = |outcome: &str| {
            format!(
                r#"{counter}{{job="osbuild-controller",instance="a:8080",outcome="{outcome}"}}"#
            )
        };
        let test = serde_json::json!({
            "rule_files": [],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": [
                    // Placed pods since long before the range (10m at 20m), two more within it.
                    {"series": series("placed"), "values": "3+0x14 4 5 5 5 5 5"},
                    // The first Linux image at 16m: the series appears with it.
                    {"series": series("not-windows"), "values": "_x15 1 1 1 1 1"},
                ],
                "promql_expr_test": [{
                    "expr": format!("({dashboard}) - on(outcome) ({plain})"),
                    "eval_time": "20m",
                    "exp_samples": [
                        {"labels": "{outcome=\"placed\"}", "value": 0},
                        {"labels": "{outcome=\"not-windows\"}", "value": 1},
                    ],
                }],
            }],
        });
        let dir = std::env::temp_dir().join(format!("osbuild-promtool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("dashboard-counts.yaml");
        std::fs::write(&file, test.to_string()).unwrap();
        let out = std::process::Command::new(promtool)
            .args(["test", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------- part 3: the dashboard's ConfigMaps

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The in-cluster audit's alerts: a Deployment at risk (it can land on a 2019 and a 2022 node, its ltsc2022
/// image runs on the 2022 one only) and one broken (pinned to the 2019 pool), images read from the real
/// test registry. Both fire; a multi-build image (2019 and 2022 entries) fixes both, the change triggers
/// the next audit, and both resolve.
#[tokio::test]
async fn workload_at_risk_and_broken_fire_and_resolve() {
    let env = TestEnv::new("prom-audit").await;
    let (ns, run) = (env.namespace.as_str(), env.prefix.as_str());
    let win19 = format!("{run}-win19");
    env.create_node(
        "ws2019",
        "windows",
        "10.0.17763.3887",
        &[("agentpool", &win19)],
    )
    .await;
    env.create_node("ws2022", "windows", "10.0.20348.2655", &[])
        .await;
    let r = registries();
    let deployment = |name: &str, selector: &str, image: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      os: {{name: windows}}
      nodeSelector: {selector}
      containers: [{{name: app, image: "{image}"}}]
"#
        )
    };
    let everywhere = format!("{{{RUN_LABEL}: {run}}}");
    let pool19 = format!("{{agentpool: {win19}}}");
    let ltsc2022 = r.plain("windows/ltsc2022");
    kubectl_with_stdin(
        &["apply", "-f", "-"],
        &deployment("risky", &everywhere, &ltsc2022),
    );
    kubectl_with_stdin(
        &["apply", "-f", "-"],
        &deployment("pinned", &pool19, &ltsc2022),
    );
    let controller = Controller::start(
        &env,
        &[
            "--audit-interval",
            "2m",
            "--namespace",
            ns,
            "--placement=false",
            "--registry-insecure",
            r.plain_host(),
        ],
    )
    .await;
    let prometheus = Prometheus::start(&env.prefix).await;
    prometheus.set_targets(&[&controller.metrics_addr]);
    wait_scraped(&prometheus, &controller.metrics_addr).await;
    let started = unix_now();

    let risky = [("namespace", ns), ("kind", "Deployment"), ("name", "risky")];
    let pinned = [
        ("namespace", ns),
        ("kind", "Deployment"),
        ("name", "pinned"),
    ];
    tokio::join!(
        prometheus.wait_pending_then_firing("OSBuildWorkloadAtRisk", &risky),
        prometheus.wait_pending_then_firing("OSBuildWorkloadBroken", &pinned),
    );
    // Each alert names its own workload only.
    assert_eq!(
        prometheus
            .alert_state("OSBuildWorkloadBroken", &risky)
            .await,
        None
    );
    assert_eq!(
        prometheus
            .alert_state("OSBuildWorkloadAtRisk", &pinned)
            .await,
        None
    );

    // The audit panels, while both workloads are flagged (the verdict series go with the fix).
    dashboard::check(&prometheus, dashboard::AUDIT).await;

    let multi = r.plain("windows/multi");
    kubectl_with_stdin(
        &["apply", "-f", "-"],
        &deployment("risky", &everywhere, &multi),
    );
    kubectl_with_stdin(
        &["apply", "-f", "-"],
        &deployment("pinned", &pool19, &multi),
    );
    tokio::join!(
        prometheus.wait_resolved("OSBuildWorkloadAtRisk", &risky),
        prometheus.wait_resolved("OSBuildWorkloadBroken", &pinned),
    );
    dashboard::draw(&prometheus, started, dashboard::AUDIT).await;
    let rules = prometheus.api("/api/v1/rules").await;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    drop(controller);
    env.cleanup().await;
}

/// Placement's panels and OSBuildPodsGatedTooLong, on the placement tests' control plane (the admission
/// policy is cluster-wide: never on the shared one), images read from the real test registry. A replica that
/// writes nothing (`--dry-run`) leaves a gated pod past the deadline: the alert fires. A writing replica
/// starts, releases it (the alert resolves) and then pods of every outcome: placed (one image read from the
/// cache), no compatible node, not Windows, and image OS unknown (a malformed manifest, a registry down).
#[tokio::test]
async fn placement_panels_and_pods_gated_too_long() {
    use k8s_openapi::api::core::v1::Pod;
    let kubeconfig = placement_kubeconfig();
    let env = TestEnv::with_client(client_from(kubeconfig).await, "prom-placement").await;
    env.create_windows_node("ws2019", "10.0.17763.6293").await;
    env.create_windows_node("ws2022", "10.0.20348.2655").await;
    let r = registries();
    // Down: a port nobody listens on.
    let down = format!("127.0.0.1:{}", free_port());
    let common = [
        "--namespace",
        env.namespace.as_str(),
        "--registry-insecure",
        r.plain_host(),
        "--registry-insecure",
        down.as_str(),
        "--registry-timeout",
        "3s",
        "--placement-deadline",
        "3s",
    ];
    let flags = |extra: &[&'static str]| [&common[..], extra].concat();
    let create = |name: &str, image: &str| {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeSelector": {"kubernetes.io/os": "windows", RUN_LABEL: env.prefix},
                     "containers": [{"name": "app", "image": image}], "terminationGracePeriodSeconds": 0}
        }))
        .unwrap();
        let pods = env.pods();
        async move { pods.create(&PostParams::default(), &pod).await.unwrap() }
    };
    let gated = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|gates| gates.iter().any(|g| g.name == PLACEMENT_GATE))
    };

    let follower = Controller::spawn_with_kubeconfig(&env, kubeconfig, &flags(&["--dry-run"]));
    follower.wait_ready().await;
    let prometheus = Prometheus::start(&env.prefix).await;
    prometheus.set_targets(&[&follower.metrics_addr]);
    wait_scraped(&prometheus, &follower.metrics_addr).await;
    let started = unix_now();

    let early = create("early", &r.plain("windows/ltsc2022")).await;
    assert!(gated(&early), "the admission policy gates the pod");
    prometheus
        .wait_pending_then_firing("OSBuildPodsGatedTooLong", &[])
        .await;

    // A writing replica releases the pod: the alert resolves because the pod is placed (the dry-run
    // replica, still scraped, sees the gate go too).
    let leader = Controller::spawn_with_kubeconfig(&env, kubeconfig, &flags(&[]));
    leader.wait_ready().await;
    prometheus.set_targets(&[&follower.metrics_addr, &leader.metrics_addr]);
    eventually("OSBuildPodsGatedTooLong resolved", TIMEOUT, || async {
        let state = prometheus.alert_state("OSBuildPodsGatedTooLong", &[]).await;
        state.is_none().then_some(())
    })
    .await;
    let placed = env.pods().get("early").await.unwrap();
    assert!(!gated(&placed), "released by the writing replica");

    // One pod per outcome; "again" reads the ltsc2022 image from the cache.
    let pods = [
        ("again", r.plain("windows/ltsc2022")),
        ("ltsc2019", r.plain("windows/ltsc2019")),
        ("multi", r.plain("windows/multi")),
        ("ltsc2025", r.plain("windows/ltsc2025:latest")),
        ("linux", r.plain("linux/app:latest")),
        ("malformed", r.plain("broken/manifest:latest")),
        ("down", format!("{down}/windows/ltsc2022")),
    ];
    for (name, image) in &pods {
        create(name, image).await;
    }
    let outcomes = [
        ("placed", 4.0),
        ("no-compatible-node", 1.0),
        ("not-windows", 1.0),
        ("image-os-unknown", 2.0),
    ];
    for (outcome, count) in outcomes {
        let q = format!(
            r#"sum(osbuild_placements_total{{job="osbuild-controller",outcome="{outcome}"}}) == {count}"#
        );
        eventually(&format!("{q} in Prometheus"), TIMEOUT, || async {
            (!prometheus.query(&q).await.is_empty()).then_some(())
        })
        .await;
    }
    for (q, what) in [
        (
            r#"sum(osbuild_registry_cache_hits_total{job="osbuild-controller"}) > 0"#,
            "an image read from the cache",
        ),
        (
            r#"sum(osbuild_image_resolutions_total{job="osbuild-controller",outcome="bad-manifest"}) > 0"#,
            "the malformed manifest counted by its category",
        ),
        (
            r#"sum(osbuild_image_resolutions_total{job="osbuild-controller",outcome="unreachable"}) > 0"#,
            "the registry down counted by its category",
        ),
    ] {
        assert_eq!(prometheus.query(q).await.len(), 1, "{what}: {q}");
    }
    dashboard::check_and_draw(&prometheus, started, dashboard::PLACEMENT).await;
    let rules = prometheus.api("/api/v1/rules").await;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
        }
    }
    drop(leader);
    drop(follower);
    env.cleanup().await;
}

/// `kubectl apply -k dashboards` and the chart's `dashboard.enabled=true` give the same ConfigMap, which the
/// API server accepts, labelled for Grafana's sidecar and holding the dashboard as it is in the repository.
#[tokio::test]
async fn dashboard_configmap_is_the_same_in_kustomize_and_helm_and_applies() {
    let env = TestEnv::new("prom-dashboard").await;
    let dashboard = std::fs::read_to_string(repo("dashboards/osbuild-controller.json")).unwrap();
    let dir = repo("dashboards");
    let kustomized = yaml_documents(&kubectl_with_stdin(
        &["kustomize", dir.to_str().unwrap()],
        "",
    ));
    assert_eq!(kustomized.len(), 1);
    let kustomized = &kustomized[0];

    let helm = built_by("tests/helm/build.sh", &[]);
    let home = std::env::temp_dir().join("osbuild-helm-test-home");
    let out = Command::new(helm)
        .args(["template", "osbuild-controller"])
        .arg(repo("charts/osbuild-controller"))
        .args([
            "--namespace",
            "osbuild-controller",
            "--set",
            "dashboard.enabled=true",
        ])
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = yaml_documents(&String::from_utf8_lossy(&out.stdout));
    let charted = rendered
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["osbuild-controller.json"].is_string())
        .expect("the chart renders the dashboard ConfigMap");

    for object in [kustomized, charted] {
        assert_eq!(object["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(object["metadata"]["namespace"], "osbuild-controller");
        let json: Value =
            serde_json::from_str(object["data"]["osbuild-controller.json"].as_str().unwrap())
                .unwrap();
        assert_eq!(json, serde_json::from_str::<Value>(&dashboard).unwrap());
    }
    assert_eq!(kustomized["metadata"]["name"], charted["metadata"]["name"]);

    let mut object = kustomized.clone();
    object["metadata"]["namespace"] = json!(env.namespace);
    let applied: Value = serde_json::from_str(&kubectl_with_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=osbuild-prometheus-test",
            "-o",
            "json",
            "-f",
            "-",
        ],
        &object.to_string(),
    ))
    .unwrap();
    assert_eq!(applied["data"], kustomized["data"]);
    env.cleanup().await;
}

/// kubectl on the shared control plane: (success, stdout and stderr together).
fn kubectl_result(args: &[&str], stdin: &str) -> (bool, String) {
    let (ok, out, err) = support::kubectl_on(support::kubeconfig(), args, stdin);
    (ok, out + &err)
}
