//! Fault tests: the controller against a control plane of each test's own (testkit: `ControlPlane`, `faults`), with
//! components restarted, watches expired (410), the server throttling (429), odd field values, and SIGTERM
//! in the middle of a burst. In every test the controller keeps running, converges afterwards, and an
//! [`Auditor`] watching the nodes for the whole test never sees a wrong label.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use support::faults::{self, Auditor, Proxy, unconverged};
use support::{
    ControlPlane, Controller, EventQuery, TestEnv, apiserver_metric, consistently, eventually,
    http_get,
};

/// Generous: on 2 cores a watch can back off for up to 30 s after a long outage.
const RECOVERY: Duration = Duration::from_secs(180);

/// Mixed real kernelVersions (tests/data/kernel_versions.json): every format, several builds.
const KERNELS: [&str; 8] = [
    "10.0.17763.3887",
    "10.0.17763.1158",
    "10.0.20348.2700",
    "10.0.26100.32995",
    "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
    "16299.15.amd64fre.rs3_release.170928-1534",
    "10.0.17763",
    "10.0.14393.1944",
];

async fn create_nodes(env: &TestEnv, prefix: &str, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..count {
        names.push(
            env.create_windows_node(&format!("{prefix}{i}"), KERNELS[i % KERNELS.len()])
                .await,
        );
    }
    names
}

async fn wait_converged(env: &TestEnv, what: &str) {
    let mut last = Vec::new();
    let deadline = Instant::now() + RECOVERY;
    loop {
        let left = unconverged(env).await;
        if left.is_empty() {
            return;
        }
        last = if left == last { last } else { left };
        assert!(
            Instant::now() < deadline,
            "{what}: not converged after {RECOVERY:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn readyz(controller: &Controller) -> (u16, String) {
    http_get(&controller.metrics_addr, "/readyz")
        .await
        .unwrap_or((0, String::new()))
}

/// The sum over the series of `name` that carry `labels` (0 when there is none).
async fn metric(controller: &Controller, name: &str, labels: &[(&str, &str)]) -> f64 {
    controller.scrape().await.sum(name, labels)
}

/// Waits until the controller reports its node watch failing: /readyz 503 naming it, osbuild_watch_up 0
/// and osbuild_watch_errors_total above `errors_before`; it must stay alive meanwhile.
async fn wait_outage_reported(controller: &Controller, errors_before: f64) -> String {
    let body = eventually("the outage is reported", RECOVERY, || async {
        let (status, body) = readyz(controller).await;
        let up = metric(controller, "osbuild_watch_up", &[("resource", "nodes")]).await;
        let errors = metric(
            controller,
            "osbuild_watch_errors_total",
            &[("resource", "nodes")],
        )
        .await;
        (status == 503
            && body.contains("[-] watch nodes: failing")
            && up == 0.0
            && errors > errors_before)
            .then_some(body)
    })
    .await;
    assert_eq!(
        controller.get("/healthz").await.0,
        200,
        "alive during the outage"
    );
    body
}

async fn wait_recovered(controller: &Controller) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (status, body) = readyz(controller).await;
        let up = metric(controller, "osbuild_watch_up", &[("resource", "nodes")]).await;
        if status == 200 && up == 1.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after {RECOVERY:?}: /readyz {status} {body:?}, osbuild_watch_up {up}; log:\n{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn terminate_cleanly(controller: Controller) {
    let log = controller.log_path.clone();
    let status = controller.terminate();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit after SIGTERM: {status:?}\n{text}");
    assert!(text.contains("shut down cleanly"), "{text}");
}

/// Moves `nodes` to the next Windows build (17763 → 20348 and so on), as an in-place upgrade does.
async fn upgrade(env: &TestEnv, nodes: &[String]) {
    for (i, node) in nodes.iter().enumerate() {
        env.set_kernel_version(node, &format!("10.0.20348.{}", 2700 + i))
            .await;
    }
}

/// `upgrade`, every node at once: a burst of watch events, so the controller's applies run concurrently
/// (one at a time, as `upgrade` sends them, they can all fit through a single seat on a fast server).
async fn upgrade_at_once(env: &TestEnv, nodes: &[String]) {
    futures::future::join_all(nodes.iter().enumerate().map(|(i, node)| async move {
        env.set_kernel_version(node, &format!("10.0.20348.{}", 2700 + i))
            .await;
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_restart_mid_run() {
    let cp = ControlPlane::up("fault-apiserver", "", "").await;
    let env = cp.env("fault-apiserver").await;
    let auditor = Auditor::start(env.client.clone(), &env.node_selector());
    let nodes = create_nodes(&env, "win", 8).await;
    env.create_node("linux", "linux", "5.15.0-1049-azure", &[])
        .await;
    let controller = Controller::spawn_with_kubeconfig(&env, &cp.kubeconfig, &[]);
    controller.wait_ready_within(Duration::from_secs(60)).await;
    wait_converged(&env, "before the restart").await;

    cp.stop("kube-apiserver").await;
    let body = wait_outage_reported(&controller, 0.0).await;
    eprintln!("readyz while kube-apiserver is down:\n{body}");
    cp.start("kube-apiserver").await;

    // Changes after the restart: upgrades and new nodes.
    upgrade(&env, &nodes[..3]).await;
    create_nodes(&env, "late", 3).await;
    wait_recovered(&controller).await;
    wait_converged(&env, "after the restart").await;
    auditor.assert_no_wrong_labels();
    terminate_cleanly(controller);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_mid_run() {
    let cp = ControlPlane::up("fault-etcd", "", "").await;
    let env = cp.env("fault-etcd").await;
    let auditor = Auditor::start(env.client.clone(), &env.node_selector());
    let nodes = create_nodes(&env, "win", 8).await;
    let first = Controller::spawn_with_kubeconfig(&env, &cp.kubeconfig, &[]);
    first.wait_ready_within(Duration::from_secs(60)).await;
    wait_converged(&env, "before the etcd restart").await;

    cp.stop("etcd").await;
    // The API server serves the open watches from its cache, so a running controller sees no error (and
    // nothing can change while etcd is down): it must stay alive and keep serving.
    consistently(
        "the running controller stays alive",
        Duration::from_secs(3),
        || async { first.get("/healthz").await.0 == 200 },
    )
    .await;
    eprintln!(
        "readyz of the running controller while etcd is down: {:?}",
        readyz(&first).await
    );
    // A controller (re)started during the outage cannot list (a consistent list needs etcd): it is not ready.
    terminate_cleanly(first);
    let second = Controller::spawn_with_kubeconfig(&env, &cp.kubeconfig, &[]);
    let body = eventually("not ready while etcd is down", RECOVERY, || async {
        let (status, body) = readyz(&second).await;
        (status == 503).then_some(body)
    })
    .await;
    consistently(
        "still not ready while etcd is down",
        Duration::from_secs(3),
        || async { readyz(&second).await.0 == 503 && second.get("/healthz").await.0 == 200 },
    )
    .await;
    eprintln!("readyz of a controller started while etcd is down:\n{body}");

    cp.start("etcd").await;
    second.wait_ready_within(RECOVERY).await;
    upgrade(&env, &nodes[..3]).await;
    create_nodes(&env, "late", 2).await;
    wait_converged(&env, "after the etcd restart").await;
    auditor.assert_no_wrong_labels();
    terminate_cleanly(second);
}

/// The controller's watch goes through a proxy; while the proxy is cut, nodes change and the API server
/// (watch cache off, compaction every second) compacts etcd past the controller's last resourceVersion, so
/// the reconnecting watch gets 410 Gone and has to re-list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_410_relists() {
    let cp = ControlPlane::up(
        "fault-410",
        "--watch-cache=false --etcd-compaction-interval=1s",
        "",
    )
    .await;
    let env = cp.env("fault-410").await;
    let auditor = Auditor::start(env.client.clone(), &env.node_selector());
    let nodes = create_nodes(&env, "win", 6).await;
    let proxy = Proxy::start(cp.apiserver_addr()).await;
    let kubeconfig = cp.kubeconfig_via(proxy.port);
    let controller = Controller::spawn_with_kubeconfig(&env, &kubeconfig, &[]);
    controller.wait_ready_within(Duration::from_secs(60)).await;
    wait_converged(&env, "before the partition").await;
    proxy.cut();
    wait_outage_reported(&controller, 0.0).await;
    let errors_during_cut = metric(
        &controller,
        "osbuild_watch_errors_total",
        &[("resource", "nodes")],
    )
    .await;
    upgrade(&env, &nodes[..3]).await;
    create_nodes(&env, "late", 2).await;
    // Every revision the controller saw is at most `cut_rv`. Once a read at exactly `cut_rv` is refused, etcd
    // has compacted past it, and the controller's watch cannot resume. Compaction only reaches revisions
    // written before its previous round, so keep writing (a ConfigMap) until then.
    let cut_rv = env
        .nodes()
        .list(&ListParams::default().labels(&env.node_selector()))
        .await
        .unwrap()
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let ticks: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    let tick: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "tick"}})).unwrap();
    ticks.create(&PostParams::default(), &tick).await.unwrap();
    let mut n = 0;
    eventually(
        "etcd compacted past every revision the controller saw",
        RECOVERY,
        || {
            n += 1;
            let (ticks, env, cut_rv) = (ticks.clone(), &env, cut_rv.clone());
            async move {
                let bump = json!({"data": {"n": n.to_string()}});
                let _ = ticks
                    .patch("tick", &PatchParams::default(), &Patch::Merge(&bump))
                    .await;
                let mut lp = ListParams::default().labels(&env.node_selector());
                lp.resource_version = Some(cut_rv);
                lp.version_match = Some(VersionMatch::Exact);
                match env.nodes().list(&lp).await {
                    Err(kube::Error::Api(status)) if status.code == 410 => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
    proxy.heal();

    wait_recovered(&controller).await;
    wait_converged(&env, "after the re-list").await;
    // The nodes watch was told its resourceVersion expired (410 Gone), and counted it as such.
    eventually(
        "the nodes watch's 410 is counted as expired",
        RECOVERY,
        || async {
            let expired = metric(
                &controller,
                "osbuild_watch_errors_total",
                &[("resource", "nodes"), ("category", "expired")],
            )
            .await;
            (expired >= 1.0).then_some(())
        },
    )
    .await;
    assert!(
        metric(
            &controller,
            "osbuild_watch_errors_total",
            &[("resource", "nodes")]
        )
        .await
            > errors_during_cut
    );
    auditor.assert_no_wrong_labels();
    terminate_cleanly(controller);
}

/// API Priority and Fairness: a FlowSchema puts the controller's ServiceAccount into a priority level with
/// no seats of its own that rejects (429) instead of queueing; the API server then admits one request of
/// it at a time. A burst of upgrades makes the controller's concurrent applies collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_429_converges() {
    let cp = ControlPlane::up("fault-429", "", "").await;
    let env = cp.env("fault-429").await;
    let auditor = Auditor::start(env.client.clone(), &env.node_selector());
    let nodes = create_nodes(&env, "win", 30).await;
    let sa = "osbuild-controller";
    let kubeconfig = cp.service_account_kubeconfig(&env, sa).await;
    let controller = Controller::spawn_with_kubeconfig(&env, &kubeconfig, &[]);
    controller.wait_ready_within(Duration::from_secs(60)).await;
    wait_converged(&env, "before throttling").await;

    let name = format!("{}-throttle", env.prefix);
    let level: PriorityLevelConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 0, "lendablePercent": 0,
                 "borrowingLimitPercent": 0, "limitResponse": {"type": "Reject"}}},
    }))
    .unwrap();
    let schema: FlowSchema = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": name},
            "matchingPrecedence": 100,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": sa, "namespace": env.namespace}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }))
    .unwrap();
    let levels: Api<PriorityLevelConfiguration> = Api::all(env.client.clone());
    let schemas: Api<FlowSchema> = Api::all(env.client.clone());
    levels.create(&PostParams::default(), &level).await.unwrap();
    schemas
        .create(&PostParams::default(), &schema)
        .await
        .unwrap();
    // In force once concurrent requests of that identity are rejected.
    let probe = support::client_without_retries(&kubeconfig).await;
    eventually(
        "the API server throttles the controller's identity",
        RECOVERY,
        || async {
            let api: Api<Node> = Api::all(probe.clone());
            let lp = ListParams::default();
            let results = futures::future::join_all((0..10).map(|_| api.list(&lp))).await;
            results
                .iter()
                .any(|r| matches!(r, Err(kube::Error::Api(s)) if s.code == 429))
                .then_some(())
        },
    )
    .await;
    let rejected = |client: kube::Client| {
        let name = name.clone();
        async move {
            apiserver_metric(
                &client,
                "apiserver_flowcontrol_rejected_requests_total",
                &[("flow_schema", &name)],
            )
            .await
        }
    };
    let rejected_before = rejected(env.client.clone()).await;

    upgrade_at_once(&env, &nodes).await;
    wait_converged(&env, "while throttled").await;
    let rejected_during = rejected(env.client.clone()).await - rejected_before;
    eprintln!(
        "controller requests rejected with 429: {rejected_during}; controller saw reconcile_errors_total{{throttled}}={}, watch_errors_total={}",
        metric(
            &controller,
            "osbuild_reconcile_errors_total",
            &[("category", "throttled")]
        )
        .await,
        metric(
            &controller,
            "osbuild_watch_errors_total",
            &[("resource", "nodes")]
        )
        .await,
    );
    assert!(
        rejected_during > 0.0,
        "the burst must have been throttled (apiserver_flowcontrol_rejected_requests_total)"
    );
    // Every rejected request surfaces in a metric: kube's own silent retry is off (src/run.rs).
    let mut seen = metric(
        &controller,
        "osbuild_reconcile_errors_total",
        &[("category", "throttled")],
    )
    .await;
    for resource in ["nodes", "pods", "pod-sandbox-events"] {
        seen += metric(
            &controller,
            "osbuild_watch_errors_total",
            &[("resource", resource)],
        )
        .await;
    }
    assert!(
        seen >= 1.0,
        "{rejected_during} requests were throttled, but no metric counted any"
    );
    assert_eq!(controller.get("/healthz").await.0, 200);

    schemas
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    levels
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    create_nodes(&env, "late", 3).await;
    wait_recovered(&controller).await;
    wait_converged(&env, "after throttling").await;
    auditor.assert_no_wrong_labels();
    terminate_cleanly(controller);
}

async fn create_raw_node(
    env: &TestEnv,
    suffix: &str,
    os_label: &str,
    status: Option<Value>,
) -> String {
    let name = env.node_name(suffix);
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": {
        support::RUN_LABEL: env.prefix, "kubernetes.io/os": os_label}}}))
    .unwrap();
    env.nodes()
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    if let Some(status) = status {
        env.nodes()
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .unwrap_or_else(|e| panic!("status of {name}: {e}"));
    }
    name
}

fn node_info(os: &str, kernel: &str) -> Value {
    json!({"nodeInfo": {"kernelVersion": kernel, "operatingSystem": os, "architecture": "amd64", "osImage": "",
        "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "containerRuntimeVersion": "containerd://2.1.0",
        "machineID": "m", "systemUUID": "s", "bootID": "b"}})
}

async fn mismatch_events(env: &TestEnv) -> Vec<Event> {
    EventQuery::new(&env.namespace)
        .reason("OSVersionMismatch")
        .list(&env.client)
        .await
}

async fn pod_with_status(env: &TestEnv, name: &str, node: &str, status: Value) {
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "mcr.microsoft.com/windows/servercore:ltsc2022"}]}}))
    .unwrap();
    env.pods()
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    env.set_pod_status(name, status).await;
}

const CONTAINERD_MISMATCH: &str = "failed to create containerd task: failed to create shim task: hcs::CreateComputeSystem app: The container operating system does not match the host operating system.: unknown";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_field_values_are_survived() {
    let cp = ControlPlane::up("fault-odd", "", "").await;
    let env = cp.env("fault-odd").await;
    let auditor = Auditor::start(env.client.clone(), &env.node_selector());
    let controller = Controller::spawn_with_kubeconfig(&env, &cp.kubeconfig, &[]);
    controller.wait_ready_within(Duration::from_secs(60)).await;

    let long = format!("10.0.17763.3887 {}", "x".repeat(20_000));
    let odd_nodes = [
        (
            "fullwidth",
            "windows",
            node_info("windows", "10.0.17763.３８８７"),
        ),
        (
            "emoji",
            "windows",
            node_info("windows", "10.0.17763.3887 🪟"),
        ),
        ("long", "windows", node_info("windows", &long)),
        (
            "control",
            "windows",
            node_info("windows", "10.0.17763.3887\n\t\r"),
        ),
        (
            "overflow",
            "windows",
            node_info("windows", "10.0.99999999999999999999.1"),
        ),
        ("negative", "windows", node_info("windows", "10.0.-17763.1")),
        ("upper", "WINDOWS", node_info("WINDOWS", "10.0.20348.2700")),
        (
            "status-only",
            "linux",
            node_info("Windows", "10.0.26100.32995"),
        ),
        ("empty-info", "windows", node_info("", "")),
        (
            "linux-kernel",
            "windows",
            node_info("windows", "5.15.0-1049-azure"),
        ),
    ];
    for (suffix, os_label, status) in odd_nodes {
        create_raw_node(&env, suffix, os_label, Some(status)).await;
    }
    create_raw_node(&env, "no-status", "windows", None).await;
    let ok = env.create_windows_node("ok", "10.0.17763.3887").await;
    wait_converged(&env, "odd nodes").await;
    for (suffix, osbuild) in [
        ("upper", "20348"),
        ("status-only", "26100"),
        ("ok", "17763"),
    ] {
        let labels = env.labels(&env.node_name(suffix)).await;
        assert_eq!(
            labels.get("beta.kubernetes.io/osbuild").map(String::as_str),
            Some(osbuild),
            "{suffix}: {labels:?}"
        );
    }

    // Pods with odd statuses, all on the Windows Server 2019 node.
    let huge = format!("{CONTAINERD_MISMATCH} {}", "y".repeat(600_000));
    let waiting = |reason: &str, message: Option<&str>| {
        let mut waiting = json!({"reason": reason});
        if let Some(message) = message {
            waiting["message"] = json!(message);
        }
        json!({"containerStatuses": [{"name": "app", "image": "img", "imageID": "", "ready": false,
                                      "restartCount": 1, "state": {"waiting": waiting}}]})
    };
    pod_with_status(&env, "huge", &ok, waiting("RunContainerError", Some(&huge))).await;
    pod_with_status(
        &env,
        "no-state",
        &ok,
        json!({"containerStatuses": [{"name": "app", "image": "img",
        "imageID": "", "ready": false, "restartCount": 0}]}),
    )
    .await;
    pod_with_status(
        &env,
        "empty-state",
        &ok,
        json!({"containerStatuses": [{"name": "app", "image": "img",
        "imageID": "", "ready": false, "restartCount": 0, "state": {}, "lastState": {}}]}),
    )
    .await;
    pod_with_status(&env, "no-message", &ok, waiting("RunContainerError", None)).await;
    pod_with_status(
        &env,
        "unicode",
        &ok,
        waiting(
            "RunContainerError",
            Some("💥 コンテナーのオペレーティング システムが一致しません \u{202e}"),
        ),
    )
    .await;
    pod_with_status(&env, "unknown-container", &ok, json!({"containerStatuses": [{"name": "ghost", "image": "",
        "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "RunContainerError", "message": CONTAINERD_MISMATCH}}}]}))
    .await;
    pod_with_status(
        &env,
        "ghost-node",
        "no-such-node",
        waiting("RunContainerError", Some(CONTAINERD_MISMATCH)),
    )
    .await;
    pod_with_status(&env, "init-odd", &ok, json!({"initContainerStatuses": [{"name": "", "image": "", "imageID": "",
        "ready": false, "restartCount": -1, "state": {"terminated": {"exitCode": -2147483648, "message": ""}}}]}))
    .await;
    // A plain mismatch afterwards is still flagged: the detector is not stuck on the odd ones.
    pod_with_status(
        &env,
        "plain",
        &ok,
        waiting("RunContainerError", Some(CONTAINERD_MISMATCH)),
    )
    .await;
    let events = eventually("the plain mismatch is flagged", RECOVERY, || async {
        let events = mismatch_events(&env).await;
        events
            .iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("plain"))
            .then_some(events)
    })
    .await;
    for event in &events {
        let note = event.note.as_deref().unwrap_or_default();
        assert!(note.len() <= 1024, "event note of {} bytes", note.len());
    }
    let flagged: Vec<String> = events
        .iter()
        .filter_map(|e| e.regarding.as_ref()?.name.clone())
        .collect();
    eprintln!("pods flagged: {flagged:?}");
    for pod in [
        "no-state",
        "empty-state",
        "no-message",
        "unicode",
        "ghost-node",
        "init-odd",
    ] {
        assert!(
            !flagged.iter().any(|f| f == pod),
            "{pod} must not be flagged"
        );
    }

    // Still alive, ready, and still labelling.
    consistently("alive and ready", Duration::from_secs(2), || async {
        readyz(&controller).await.0 == 200 && controller.get("/healthz").await.0 == 200
    })
    .await;
    env.set_kernel_version(&ok, "10.0.20348.2700").await;
    wait_converged(&env, "a normal upgrade after the odd objects").await;
    auditor.assert_no_wrong_labels();
    terminate_cleanly(controller);
}

/// SIGTERM while 300 nodes are being relabelled: every node ends either fully relabelled or untouched, and
/// a restarted controller finishes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_leaves_nodes_consistent() {
    const NODES: usize = 300;
    let cp = ControlPlane::up("fault-sigterm", "", "").await;
    let env = cp.env("fault-sigterm").await;
    let auditor = Auditor::start(env.client.clone(), &env.node_selector());
    let names: Vec<String> = futures::stream::iter(0..NODES)
        .map(|i| {
            let env = &env;
            async move {
                env.create_windows_node(&format!("n{i:03}"), &format!("10.0.17763.{}", 1000 + i))
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let controller = Controller::spawn_with_kubeconfig(&env, &cp.kubeconfig, &[]);
    controller.wait_ready_within(Duration::from_secs(60)).await;
    wait_converged(&env, "before the burst").await;

    let relabelled = |env: &TestEnv| {
        let lp = ListParams::default().labels(&env.node_selector());
        let nodes = env.nodes();
        async move {
            nodes
                .list(&lp)
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|n| {
                            n.labels()
                                .get("beta.kubernetes.io/osbuild")
                                .map(String::as_str)
                                == Some("20348")
                        })
                        .count()
                })
                .unwrap_or(0)
        }
    };
    let burst = {
        let (client, names) = (env.client.clone(), names.clone());
        tokio::spawn(async move {
            let api: Api<Node> = Api::all(client);
            futures::stream::iter(names.into_iter().enumerate())
                .map(|(i, name)| {
                    let api = api.clone();
                    async move {
                        let patch = json!({"status": {"nodeInfo": {"kernelVersion": format!("10.0.20348.{}", 2000 + i)}}});
                        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .expect("kernelVersion patch");
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        })
    };
    eventually(
        "the controller has started relabelling",
        RECOVERY,
        || async { (relabelled(&env).await > 0).then_some(()) },
    )
    .await;
    let log = controller.log_path.clone();
    let status = controller.terminate();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit after SIGTERM: {status:?}\n{text}");
    burst.await.unwrap();

    // Every node: our labels are exactly the set for its old kernel (untouched) or its new one (done).
    let nodes = env
        .nodes()
        .list(&ListParams::default().labels(&env.node_selector()))
        .await
        .unwrap()
        .items;
    let mut done = 0;
    for node in &nodes {
        let ours = faults::ours(node);
        let new = faults::desired(node).expect("reported");
        let i: usize = node.name_any().rsplit('n').next().unwrap().parse().unwrap();
        let mut old_node = node.clone();
        old_node
            .status
            .as_mut()
            .unwrap()
            .node_info
            .as_mut()
            .unwrap()
            .kernel_version = format!("10.0.17763.{}", 1000 + i);
        let old = faults::desired(&old_node).expect("reported");
        assert!(
            ours == new || ours == old,
            "{}: labels {ours:?} are neither {old:?} nor {new:?}",
            node.name_any()
        );
        done += usize::from(ours == new);
    }
    eprintln!(
        "at SIGTERM: {done} of {} nodes relabelled, the rest untouched",
        nodes.len()
    );
    auditor.assert_no_wrong_labels();

    let again = Controller::spawn_with_kubeconfig(&env, &cp.kubeconfig, &[]);
    again.wait_ready_within(Duration::from_secs(60)).await;
    wait_converged(&env, "after the restart").await;
    auditor.assert_no_wrong_labels();
    terminate_cleanly(again);
}
