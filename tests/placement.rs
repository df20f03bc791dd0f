//! Placement end to end: the MutatingAdmissionPolicy applied from manifests/ with kubectl gates new Windows
//! pods, `osbuild-controller run` reads their images from real registries (scripts/registry: distribution's
//! registry with TLS + htpasswd, crane's plain one; images pushed by crane, tests/registry/fixtures.sh),
//! adds the node affinity and removes the gate, and kube-scheduler binds the pods to the test's nodes.
//!
//! The policy is cluster-wide, so these tests run on a control plane of their own (started once per run
//! in target/placement-cp, or given by OSBUILD_PLACEMENT_KUBECONFIG as scripts/test does): on the shared
//! one it would gate the Windows pods of every other test. Each test has its own namespace, nodes (three
//! Windows hosts: WS2019, WS2022, WS2025) and controller scoped to both; its pods select the test's nodes
//! by the run label, so kube-scheduler never binds them to another test's node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use support::{Controller, RUN_LABEL, TIMEOUT, TestEnv, consistently, eventually, registries};

const GATE: &str = support::PLACEMENT_GATE;
const KEY: &str = "beta.kubernetes.io/osbuild";
const OTHER_GATE: &str = "example.com/quota";
const LTSC2019_HOSTS: &[&str] = &["17763"];
const LTSC2022_HOSTS: &[&str] = &["20348", "22000", "22621", "22631", "25398", "26100"];
const LTSC2025_HOSTS: &[&str] = &["26100", "26200"];

// ------------------------------------------------------------------ the control plane and the policy

/// The placement tests' own control plane, with the shipped manifests applied (the kit's, once per binary).
fn kubeconfig() -> &'static Path {
    support::placement_kubeconfig()
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> String {
    let (ok, stdout, stderr) = support::kubectl_on(kubeconfig, args, stdin);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}

async fn client() -> Client {
    let parsed = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

// ------------------------------------------------------------------ the registries

// ------------------------------------------------------------------ one test's cluster

struct Cluster {
    env: TestEnv,
    ws2019: String,
    ws2022: String,
    ws2025: String,
}

impl Cluster {
    /// A namespace and three Windows nodes: WS2019, WS2022 and WS2025 (kernelVersions as kubelets report).
    async fn new(test: &str) -> Self {
        let _ = registries();
        let env = TestEnv::with_client(client().await, test).await;
        let ws2019 = env.create_windows_node("ws2019", "10.0.17763.6293").await;
        let ws2022 = env.create_windows_node("ws2022", "10.0.20348.2655").await;
        let ws2025 = env.create_windows_node("ws2025", "10.0.26100.1742").await;
        Self {
            env,
            ws2019,
            ws2022,
            ws2025,
        }
    }

    /// Only a WS2019 node.
    async fn ws2019_only(test: &str) -> Self {
        let _ = registries();
        let env = TestEnv::with_client(client().await, test).await;
        let ws2019 = env.create_windows_node("ws2019", "10.0.17763.6293").await;
        Self {
            env,
            ws2019,
            ws2022: String::new(),
            ws2025: String::new(),
        }
    }

    /// The controller, scoped to this test's nodes and namespace, trusting the test registries.
    async fn controller(&self, extra: &[&str]) -> Controller {
        let c = Controller::spawn_with_kubeconfig(&self.env, kubeconfig(), &self.flags(extra));
        c.wait_ready().await;
        c
    }

    fn flags<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let r = registries();
        let mut flags = vec![
            "--namespace",
            self.env.namespace.as_str(),
            "--registry-insecure",
            r.get("REGISTRY_PLAIN"),
            "--registry-ca-file",
            r.get("REGISTRY_CA"),
        ];
        if !extra.contains(&"--registry-timeout") {
            flags.extend(["--registry-timeout", "3s"]);
        }
        if !extra.contains(&"--placement-deadline") {
            flags.extend(["--placement-deadline", "6s"]);
        }
        flags.extend_from_slice(extra);
        flags
    }

    /// A Windows pod (nodeSelector kubernetes.io/os=windows and this test's nodes) running `image`, with
    /// `extra` merged into its spec. Returns the pod as admitted.
    async fn pod(&self, name: &str, image: &str, extra: Value) -> Pod {
        let mut spec = json!({
            "nodeSelector": {"kubernetes.io/os": "windows", RUN_LABEL: self.env.prefix},
            "containers": [{"name": "app", "image": image}],
            "terminationGracePeriodSeconds": 0,
        });
        merge(&mut spec, &extra);
        self.create(json!({"metadata": {"name": name}, "spec": spec}))
            .await
    }

    async fn create(&self, pod: Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.env
            .pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod: {e}"))
    }

    async fn get(&self, name: &str) -> Pod {
        self.env.pods().get(name).await.expect("get pod")
    }

    /// Waits until kube-scheduler has bound the pod; returns its node.
    async fn scheduled(&self, name: &str) -> String {
        eventually(&format!("pod {name} scheduled"), TIMEOUT, || async {
            self.get(name).await.spec?.node_name
        })
        .await
    }

    /// Waits until our gate is gone; returns the pod.
    async fn released(&self, name: &str) -> Pod {
        eventually(&format!("pod {name} released"), TIMEOUT, || async {
            let pod = self.get(name).await;
            (!gates(&pod).contains(&GATE.to_owned())).then_some(pod)
        })
        .await
    }

    /// The Event with `reason` about the pod, once there.
    async fn event(&self, name: &str, reason: &str) -> Event {
        eventually(&format!("{reason} Event on {name}"), TIMEOUT, || async {
            Api::<Event>::namespaced(self.env.client.clone(), &self.env.namespace)
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.reason.as_deref() == Some(reason)
                })
        })
        .await
    }

    /// A kubernetes.io/dockerconfigjson secret for the secure registry.
    async fn pull_secret(&self, name: &str, user: &str, password: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let config = json!({"auths": {registries().get("REGISTRY_SECURE"): {"auth": auth}}});
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": config.to_string()},
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.env.client.clone(), &self.env.namespace)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create secret");
    }

    async fn cleanup(self) {
        self.env.cleanup().await;
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn gates(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.name)
        .collect()
}

/// The required node-affinity terms, as JSON.
fn terms(pod: &Pod) -> Value {
    serde_json::to_value(pod).unwrap()["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .clone()
}

/// The values of our `osbuild In [...]` expression in every term (they must be the same in each).
fn osbuild_values(pod: &Pod) -> Vec<String> {
    let terms = terms(pod);
    let mut found: Option<Vec<String>> = None;
    for term in terms.as_array().expect("node affinity terms") {
        let values: Vec<String> = term["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["key"] == KEY)
            .map(|e| {
                assert_eq!(e["operator"], "In");
                serde_json::from_value(e["values"].clone()).unwrap()
            })
            .next()
            .expect("our expression in every term");
        if let Some(previous) = &found {
            assert_eq!(previous, &values, "the same values in every term");
        }
        found = Some(values);
    }
    found.expect("at least one term")
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The admission policy gated the pod at creation (the positive control for every "not gated" case).
fn assert_gated(pod: &Pod) {
    assert!(
        gates(pod).contains(&GATE.to_owned()),
        "pod not gated at admission: {:?}",
        gates(pod)
    );
}

// ------------------------------------------------------------------ the cases

/// Indexes of one build each, a multi-build index, a Docker manifest list, a single manifest (config only),
/// an index entry without os.version: each is placed where its image runs, and kube-scheduler binds it
/// there. The ltsc2022 image lands on WS2022 or WS2025, never on WS2019.
#[tokio::test]
async fn windows_images_are_placed_on_hosts_that_run_them() {
    let cluster = Cluster::new("placement-shapes").await;
    let controller = cluster.controller(&[]).await;
    let r = registries();
    let all_2022: Vec<&str> = LTSC2019_HOSTS
        .iter()
        .chain(LTSC2022_HOSTS)
        .copied()
        .collect();
    let single: Vec<&str> = LTSC2022_HOSTS.iter().copied().chain(["26200"]).collect();
    // (pod, image, the osbuild values, the nodes it may land on)
    let cases: Vec<(&str, String, Vec<&str>, Vec<&str>)> = vec![
        (
            "ltsc2019",
            r.plain("windows/ltsc2019"),
            LTSC2019_HOSTS.to_vec(),
            vec![&cluster.ws2019],
        ),
        (
            "ltsc2022",
            r.plain("windows/ltsc2022"),
            LTSC2022_HOSTS.to_vec(),
            vec![&cluster.ws2022, &cluster.ws2025],
        ),
        (
            "ltsc2025",
            r.plain("windows/ltsc2025:latest"),
            LTSC2025_HOSTS.to_vec(),
            vec![&cluster.ws2025],
        ),
        (
            "multi",
            r.plain("windows/multi"),
            all_2022.clone(),
            vec![&cluster.ws2019, &cluster.ws2022, &cluster.ws2025],
        ),
        (
            "dockerlist",
            r.plain("windows/dockerlist"),
            all_2022.clone(),
            vec![&cluster.ws2019, &cluster.ws2022, &cluster.ws2025],
        ),
        (
            "single",
            r.plain("windows/single"),
            single,
            vec![&cluster.ws2022, &cluster.ws2025],
        ),
        // Its 17763 entry says no os.version (its config does): containerd pulls it on hosts no other entry
        // matches, which is where 17763 starts.
        (
            "noversion",
            r.plain("windows/noversion"),
            all_2022,
            vec![&cluster.ws2019, &cluster.ws2022, &cluster.ws2025],
        ),
    ];
    for (name, image, _, _) in &cases {
        assert_gated(&cluster.pod(name, image, json!({})).await);
    }
    for (name, image, values, nodes) in &cases {
        let pod = cluster.released(name).await;
        assert_eq!(osbuild_values(&pod), strs(values), "{name} ({image})");
        let node = cluster.scheduled(name).await;
        assert!(
            nodes.contains(&node.as_str()),
            "{name} bound to {node}, expected one of {nodes:?}"
        );
        let event = cluster.event(name, "Placed").await;
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert!(
            event
                .note
                .as_deref()
                .unwrap_or_default()
                .contains(image.as_str()),
            "{event:?}"
        );
    }
    // Several ltsc2022 pods: none on WS2019, whatever the scheduler spreads.
    for i in 0..4 {
        cluster
            .pod(
                &format!("spread-{i}"),
                &r.plain("windows/ltsc2022"),
                json!({}),
            )
            .await;
    }
    for i in 0..4 {
        let node = cluster.scheduled(&format!("spread-{i}")).await;
        assert_ne!(node, cluster.ws2019, "an ltsc2022 pod on WS2019");
    }
    controller
        .wait_metric("osbuild_placements_total", &[("outcome", "placed")], 11.0)
        .await;
    let latency_count = controller
        .metric("osbuild_gate_to_placed_seconds_count", &[])
        .await
        .unwrap();
    let latency_sum = controller
        .metric("osbuild_gate_to_placed_seconds_sum", &[])
        .await
        .unwrap();
    eprintln!(
        "gate-to-placed: {latency_count} pods, mean {:.3}s",
        latency_sum / latency_count
    );
    assert!(
        controller
            .metric("osbuild_registry_request_duration_seconds_count", &[])
            .await
            .unwrap()
            > 0.0
    );
    // Eleven pods, seven distinct images: the cache answered the others.
    assert!(
        controller
            .metric("osbuild_registry_cache_hits_total", &[])
            .await
            .unwrap()
            >= 4.0
    );
    cluster.cleanup().await;
}

/// A Linux image on a pod that asked for Windows: the gate goes, nothing is added. Every other gate stays.
#[tokio::test]
async fn a_linux_image_only_loses_our_gate() {
    let cluster = Cluster::new("placement-linux").await;
    let _controller = cluster.controller(&[]).await;
    let pod = cluster
        .pod(
            "linux",
            &registries().plain("linux/app:latest"),
            json!({"schedulingGates": [{"name": OTHER_GATE}]}),
        )
        .await;
    assert_gated(&pod);
    let pod = cluster.released("linux").await;
    assert_eq!(gates(&pod), strs(&[OTHER_GATE]), "only our gate removed");
    assert_eq!(terms(&pod), Value::Null, "no affinity for a Linux image");
    cluster.event("linux", "Placed").await;
    cluster.cleanup().await;
}

/// Existing required terms each get the expression (the only shape the API server accepts while gated);
/// a pod selecting the osbuild key itself and a HostProcess pod are not gated and are left untouched.
#[tokio::test]
async fn existing_terms_are_narrowed_and_pods_that_choose_are_left_alone() {
    let cluster = Cluster::new("placement-terms").await;
    let controller = cluster.controller(&[]).await;
    let r = registries();
    let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]},
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [cluster.ws2019, cluster.ws2025]}]},
    ]}}}});
    assert_gated(
        &cluster
            .pod("terms", &r.plain("windows/ltsc2022"), affinity)
            .await,
    );
    // Selects the osbuild key itself (a hand-written selector): not gated, never changed.
    let own = cluster
        .pod(
            "own",
            &r.plain("windows/ltsc2022"),
            json!({"nodeSelector": {KEY: "17763"}}),
        )
        .await;
    assert_eq!(gates(&own), Vec::<String>::new());
    let host_process = cluster
        .pod(
            "hostprocess",
            &r.plain("windows/ltsc2022"),
            json!({"hostNetwork": true, "securityContext": {"windowsOptions": {"hostProcess": true, "runAsUserName": "NT AUTHORITY\\SYSTEM"}}}),
        )
        .await;
    assert_eq!(
        gates(&host_process),
        Vec::<String>::new(),
        "HostProcess pods are not gated"
    );
    let opted_out = cluster
        .pod("opted-out", &r.plain("windows/ltsc2022"), json!({}))
        .await;
    // (Annotated pods are created below; this one is the positive control of the same shape.)
    assert_gated(&opted_out);
    let annotated: Pod = cluster
        .create(json!({
            "metadata": {"name": "annotated", "annotations": {"osbuild-controller.io/placement": "off"}},
            "spec": {"nodeSelector": {"kubernetes.io/os": "windows", RUN_LABEL: cluster.env.prefix},
                     "containers": [{"name": "app", "image": r.plain("windows/ltsc2022")}]},
        }))
        .await;
    assert_eq!(
        gates(&annotated),
        Vec::<String>::new(),
        "annotated off: not gated"
    );

    let pod = cluster.released("terms").await;
    let ours = json!({"key": KEY, "operator": "In", "values": LTSC2022_HOSTS});
    assert_eq!(
        terms(&pod),
        json!([
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}, ours]},
            {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [cluster.ws2019, cluster.ws2025]}, ours]},
        ])
    );
    // Only WS2025 satisfies both the user's second term and ours (the first term has no amd64 label here).
    assert_eq!(cluster.scheduled("terms").await, cluster.ws2025);
    cluster.released("opted-out").await;
    // The pod that chose its own host: scheduled by its own selector, its spec as written.
    assert_eq!(cluster.scheduled("own").await, cluster.ws2019);
    let own = cluster.get("own").await;
    assert_eq!(terms(&own), Value::Null);
    controller
        .wait_metric("osbuild_placements_total", &[("outcome", "placed")], 2.0)
        .await;
    cluster.cleanup().await;
}

/// A pod with a Hyper-V RuntimeClass gets the Hyper-V set: hosts of the image's build or newer.
#[tokio::test]
async fn a_hyper_v_runtime_class_gets_every_newer_host() {
    let cluster = Cluster::new("placement-hyperv").await;
    let _controller = cluster.controller(&[]).await;
    let class = format!("{}-hyperv", cluster.env.prefix);
    // containerd's Hyper-V runtime handler for Windows (containerd docs/cri/config.md).
    kubectl(
        kubeconfig(),
        &["apply", "-f", "-"],
        &json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": class},
                "handler": "runhcs-wcow-hypervisor"})
        .to_string(),
    );
    let image = registries().plain("windows/ltsc2019");
    assert_gated(
        &cluster
            .pod("hyperv", &image, json!({"runtimeClassName": class}))
            .await,
    );
    assert_gated(&cluster.pod("process", &image, json!({})).await);
    let hyperv = osbuild_values(&cluster.released("hyperv").await);
    for build in ["17763", "20348", "26100"] {
        assert!(
            hyperv.contains(&build.to_owned()),
            "{build} missing from {hyperv:?}"
        );
    }
    // The same image with process isolation: its own build only.
    assert_eq!(
        osbuild_values(&cluster.released("process").await),
        strs(LTSC2019_HOSTS)
    );
    kubectl(kubeconfig(), &["delete", "runtimeclass", &class], "");
    cluster.cleanup().await;
}

/// No node of the cluster runs the image: placed anyway (it waits Pending) with a Warning naming the build.
#[tokio::test]
async fn no_compatible_node_places_the_pod_and_warns() {
    let cluster = Cluster::ws2019_only("placement-nonode").await;
    let controller = cluster.controller(&[]).await;
    assert_gated(
        &cluster
            .pod(
                "ltsc2025",
                &registries().plain("windows/ltsc2025"),
                json!({}),
            )
            .await,
    );
    let pod = cluster.released("ltsc2025").await;
    assert_eq!(osbuild_values(&pod), strs(LTSC2025_HOSTS));
    let event = cluster.event("ltsc2025", "NoCompatibleNode").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap().contains("26100"));
    consistently("the pod waits Pending", Duration::from_secs(2), || async {
        cluster
            .get("ltsc2025")
            .await
            .spec
            .unwrap()
            .node_name
            .is_none()
    })
    .await;
    controller
        .wait_metric(
            "osbuild_placements_total",
            &[("outcome", "no-compatible-node")],
            1.0,
        )
        .await;
    cluster.cleanup().await;
}

/// Found by the soak (seed 42): images that no Windows build runs together (an ltsc2019 init container
/// beside an ltsc2022 app). The controller asked for `osbuild In []`, the API server refused it (422), and
/// the pod was released without any constraint, to start where it cannot run. Now it gets a requirement no
/// node matches, which the API server accepts on a gated pod, and waits Pending with NoCompatibleNode,
/// while the same app alone (the positive control) is bound.
#[tokio::test]
async fn images_no_build_runs_together_wait_pending_off_every_node() {
    let cluster = Cluster::new("placement-apart").await;
    let controller = cluster.controller(&[]).await;
    let r = registries();
    let init = json!({"initContainers": [{"name": "init", "image": r.plain("windows/ltsc2019")}]});
    assert_gated(
        &cluster
            .pod("apart", &r.plain("windows/ltsc2022"), init)
            .await,
    );
    assert_gated(
        &cluster
            .pod("alone", &r.plain("windows/ltsc2022"), json!({}))
            .await,
    );
    let pod = cluster.released("apart").await;
    assert_eq!(
        terms(&pod),
        json!([{"matchExpressions": [
            {"key": KEY, "operator": "Exists"},
            {"key": KEY, "operator": "DoesNotExist"},
        ]}])
    );
    let event = cluster.event("apart", "NoCompatibleNode").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("no Windows build runs every image"),
        "{event:?}"
    );
    cluster.scheduled("alone").await;
    consistently("the pod waits Pending", Duration::from_secs(2), || async {
        cluster.get("apart").await.spec.unwrap().node_name.is_none()
    })
    .await;
    controller
        .wait_metric(
            "osbuild_placements_total",
            &[("outcome", "no-compatible-node")],
            1.0,
        )
        .await;
    assert_eq!(
        controller
            .metric(
                "osbuild_placements_total",
                &[("outcome", "image-os-unknown")]
            )
            .await
            .unwrap_or_default(),
        0.0
    );
    cluster.cleanup().await;
}

/// A private image: read with the pull secret on the pod, or on its ServiceAccount; wrong credentials
/// release the pod with ImageOSUnknown naming the error.
#[tokio::test]
async fn private_images_are_read_with_the_pods_pull_secrets() {
    let cluster = Cluster::new("placement-private").await;
    let controller = cluster.controller(&[]).await;
    let r = registries();
    let image = r.secure("private/ltsc2019");
    cluster
        .pull_secret("good", r.get("REGISTRY_USER"), r.get("REGISTRY_PASSWORD"))
        .await;
    cluster
        .pull_secret("bad", r.get("REGISTRY_USER"), "not-the-password")
        .await;
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "puller"}, "imagePullSecrets": [{"name": "good"}],
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(cluster.env.client.clone(), &cluster.env.namespace)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    assert_gated(
        &cluster
            .pod(
                "on-pod",
                &image,
                json!({"imagePullSecrets": [{"name": "good"}]}),
            )
            .await,
    );
    assert_gated(
        &cluster
            .pod("on-sa", &image, json!({"serviceAccountName": "puller"}))
            .await,
    );
    assert_gated(
        &cluster
            .pod(
                "wrong",
                &image,
                json!({"imagePullSecrets": [{"name": "bad"}]}),
            )
            .await,
    );
    for name in ["on-pod", "on-sa"] {
        assert_eq!(
            osbuild_values(&cluster.released(name).await),
            strs(LTSC2019_HOSTS),
            "{name}"
        );
        assert_eq!(cluster.scheduled(name).await, cluster.ws2019);
    }
    let wrong = cluster.released("wrong").await;
    assert_eq!(
        terms(&wrong),
        Value::Null,
        "no affinity without the image's OS"
    );
    let event = cluster.event("wrong", "ImageOSUnknown").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap();
    assert!(
        note.contains(&image) && note.contains("unauthorized"),
        "{note}"
    );
    controller
        .wait_metric(
            "osbuild_image_resolutions_total",
            &[("outcome", "unauthorized")],
            1.0,
        )
        .await;
    cluster.cleanup().await;
}

/// Registry down, registry slow past the deadline, malformed manifest: the pod is never stranded. Errors
/// that may pass are retried until --placement-deadline; then (or at once, for an error retrying cannot
/// fix) the gate goes without affinity and a Warning names the image and the error.
#[tokio::test]
async fn registry_failures_release_the_pod_with_image_os_unknown() {
    let cluster = Cluster::new("placement-failures").await;
    // Down: a port nobody listens on. Slow: a listener that accepts and never answers.
    let down = format!("127.0.0.1:{}", support::free_port());
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = silent.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let controller = cluster
        .controller(&["--registry-insecure", &down, "--registry-insecure", &slow])
        .await;
    let cases = [
        ("down", format!("{down}/windows/ltsc2022"), "unreachable"),
        ("slow", format!("{slow}/windows/ltsc2022"), "timeout"),
        (
            "malformed",
            registries().plain("broken/manifest:latest"),
            "bad-manifest",
        ),
    ];
    for (name, image, _) in &cases {
        assert_gated(&cluster.pod(name, image, json!({})).await);
    }
    for (name, image, category) in &cases {
        let pod = cluster.released(name).await;
        assert_eq!(terms(&pod), Value::Null, "{name}: no affinity");
        let event = cluster.event(name, "ImageOSUnknown").await;
        let note = event.note.unwrap();
        assert!(
            note.contains(image.as_str()) && note.contains(category),
            "{name}: {note}"
        );
    }
    // The transient ones were asked again before the deadline freed them.
    assert!(
        controller
            .metric(
                "osbuild_image_resolutions_total",
                &[("outcome", "unreachable")]
            )
            .await
            .unwrap()
            >= 2.0
    );
    controller
        .wait_metric(
            "osbuild_placements_total",
            &[("outcome", "image-os-unknown")],
            3.0,
        )
        .await;
    // And the pods are scheduled (anywhere among the test's nodes): not stranded.
    for (name, _, _) in &cases {
        cluster.scheduled(name).await;
    }
    hold.abort();
    cluster.cleanup().await;
}

/// A registry front that holds every connection unanswered until `heal`, then forwards to `upstream`:
/// a registry that is slow for a while and then recovers.
struct Stalled {
    addr: String,
    healed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Stalled {
    async fn start(upstream: String) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let healed = std::sync::Arc::new(AtomicBool::new(false));
        let flag = healed.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    held.push(socket);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut socket, &mut server).await;
                    }
                });
            }
        });
        Self { addr, healed, task }
    }

    fn heal(&self) {
        self.healed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The leader dies while pods are gated (its registry is stalled, so it keeps retrying them): the new
/// leader places them once the registry answers.
#[tokio::test]
async fn a_new_leader_places_the_pods_the_old_one_left_gated() {
    let cluster = Cluster::new("placement-leader").await;
    let stalled = Stalled::start(registries().get("REGISTRY_PLAIN").to_owned()).await;
    let lease = format!("{}-lease", cluster.env.prefix);
    let flags = [
        "--leader-elect",
        "--lease-name",
        &lease,
        "--lease-namespace",
        &cluster.env.namespace,
        "--lease-duration",
        "4s",
        "--registry-insecure",
        &stalled.addr,
        "--registry-timeout",
        "1s",
        "--placement-deadline",
        "60s",
    ];
    let a = cluster.controller(&flags).await;
    a.wait_metric("osbuild_leader", &[], 1.0).await;
    let b = cluster.controller(&flags).await;
    assert_eq!(b.metric("osbuild_leader", &[]).await, Some(0.0));
    let image = format!("{}/windows/ltsc2022", stalled.addr);
    for i in 0..3 {
        assert_gated(&cluster.pod(&format!("p{i}"), &image, json!({})).await);
    }
    // The leader is working on them (its reads time out and are retried) when it dies.
    eventually(
        "the leader retrying the stalled registry",
        TIMEOUT,
        || async {
            (a.metric("osbuild_image_resolutions_total", &[("outcome", "timeout")])
                .await?
                >= 3.0)
                .then_some(())
        },
    )
    .await;
    a.kill();
    for i in 0..3 {
        assert!(gates(&cluster.get(&format!("p{i}")).await).contains(&GATE.to_owned()));
    }
    stalled.heal();
    // The follower has tracked them and, once it leads, places every one.
    b.wait_metric("osbuild_leader", &[], 1.0).await;
    for i in 0..3 {
        let pod = cluster.released(&format!("p{i}")).await;
        assert_eq!(osbuild_values(&pod), strs(LTSC2022_HOSTS));
    }
    b.wait_metric("osbuild_placements_total", &[("outcome", "placed")], 3.0)
        .await;
    stalled.task.abort();
    cluster.cleanup().await;
}

/// Without the controller the pods stay gated (the gauge and alert are for that); `ungate --all` frees
/// them, removing only our gate.
#[tokio::test]
async fn without_the_controller_pods_stay_gated_until_ungate() {
    let cluster = Cluster::new("placement-absent").await;
    let image = registries().plain("windows/ltsc2022");
    assert_gated(&cluster.pod("a", &image, json!({})).await);
    assert_gated(
        &cluster
            .pod(
                "b",
                &image,
                json!({"schedulingGates": [{"name": OTHER_GATE}]}),
            )
            .await,
    );
    consistently(
        "pods stay gated without the controller",
        Duration::from_secs(2),
        || async { gates(&cluster.get("a").await).contains(&GATE.to_owned()) },
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args([
            "ungate",
            "--all",
            "-n",
            &cluster.env.namespace,
            "--kubeconfig",
        ])
        .arg(kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/a: gate removed") && stdout.contains("/b: gate removed"),
        "{stdout}"
    );
    assert_eq!(gates(&cluster.get("a").await), Vec::<String>::new());
    assert_eq!(
        gates(&cluster.get("b").await),
        strs(&[OTHER_GATE]),
        "other gates stay"
    );
    // Freed without a host constraint: kube-scheduler binds it.
    cluster.scheduled("a").await;
    // Named pods, and a pod that is not gated (any more).
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(["ungate", "a", "-n", &cluster.env.namespace, "--kubeconfig"])
        .arg(kubeconfig())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("/a: not gated"));
    cluster.cleanup().await;
}

/// The gauge of pods gated past the deadline: with placement off, a gated pod is counted once it is late;
/// the same controller process with placement on would have released it.
#[tokio::test]
async fn pods_gated_past_the_deadline_are_counted() {
    let cluster = Cluster::new("placement-gauge").await;
    let image = registries().plain("windows/ltsc2022");
    // A follower (dry run) watches and counts, but never releases.
    let controller = cluster
        .controller(&["--dry-run", "--placement-deadline", "2s"])
        .await;
    assert_gated(&cluster.pod("late", &image, json!({})).await);
    controller
        .wait_metric("osbuild_pods_gated_too_long", &[], 1.0)
        .await;
    assert!(gates(&cluster.get("late").await).contains(&GATE.to_owned()));
    // Released (by ungate here): the gauge drops.
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args([
            "ungate",
            "late",
            "-n",
            &cluster.env.namespace,
            "--kubeconfig",
        ])
        .arg(kubeconfig())
        .output()
        .unwrap();
    assert!(out.status.success());
    controller
        .wait_metric("osbuild_pods_gated_too_long", &[], 0.0)
        .await;
    cluster.cleanup().await;
}

/// Placement off: the loop does not run, so nothing is released (the positive control: the same pod is
/// released once a controller with placement on starts).
#[tokio::test]
async fn placement_false_leaves_gated_pods_alone() {
    let cluster = Cluster::new("placement-off").await;
    let off = cluster.controller(&["--placement=false"]).await;
    assert_gated(
        &cluster
            .pod("p", &registries().plain("windows/ltsc2019"), json!({}))
            .await,
    );
    consistently(
        "still gated with --placement=false",
        Duration::from_secs(2),
        || async { gates(&cluster.get("p").await).contains(&GATE.to_owned()) },
    )
    .await;
    assert_eq!(off.metric("osbuild_pods_gated_too_long", &[]).await, None);
    drop(off);
    let _on = cluster.controller(&[]).await;
    assert_eq!(
        osbuild_values(&cluster.released("p").await),
        strs(LTSC2019_HOSTS)
    );
    cluster.cleanup().await;
}
