//! Fault-test harness (used by tests/faults.rs as `#[path = "support/faults.rs"] mod faults;`, next to
//! `mod support;`):
//!
//! - [`ControlPlane`]: a control plane of the test's own, started with `scripts/control-plane up` in a state
//!   dir of its own on free ports, with extra kube-apiserver/etcd flags; single components stop, start and
//!   restart (`scripts/control-plane stop|start|restart COMPONENT`); `down` on drop. Restarting the shared
//!   control plane would break the tests running in parallel against it.
//! - [`Proxy`]: a TCP proxy between the controller and the API server that can cut every connection and
//!   refuse new ones (a network partition), to make a watch reconnect from an old resourceVersion.
//! - [`Auditor`]: watches the test's nodes for the whole test and records every label set of ours that was
//!   never right for any state the node was seen in (a wrong label).
#![allow(dead_code)] // not every fault test uses every helper

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{GetParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use osbuild_controller::core::labels::LabelKeys;
use osbuild_controller::nodes::plan::plan;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::{TestEnv, unique_prefix};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `n` distinct free loopback ports.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A control plane of one test's own. `down` (and removal of its state dir) on drop.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub apiserver_port: u16,
}

impl ControlPlane {
    /// `scripts/control-plane up` in a fresh state dir on free ports, with extra flags for kube-apiserver and
    /// etcd (kept for component restarts). Fails the test with the script's output when it cannot start.
    pub async fn up(test: &str, apiserver_args: &str, etcd_args: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("osbuild-faults-{}", unique_prefix(test)));
        let ports = free_ports(4);
        let (dir2, ports2, apiserver_args, etcd_args) = (
            dir.clone(),
            ports.clone(),
            apiserver_args.to_owned(),
            etcd_args.to_owned(),
        );
        let output = tokio::task::spawn_blocking(move || {
            Command::new(repo_root().join("scripts/control-plane"))
                .arg("up")
                .env("OSBUILD_CONTROL_PLANE_DIR", &dir2)
                .env("OSBUILD_APISERVER_PORT", ports2[0].to_string())
                .env("OSBUILD_ETCD_PORT", ports2[1].to_string())
                .env("OSBUILD_ETCD_PEER_PORT", ports2[2].to_string())
                .env("OSBUILD_SCHEDULER_PORT", ports2[3].to_string())
                .env("OSBUILD_APISERVER_EXTRA_ARGS", apiserver_args)
                .env("OSBUILD_ETCD_EXTRA_ARGS", etcd_args)
                .env_remove("OSBUILD_ETCD_DATA_DIR")
                .stdin(Stdio::null())
                .output()
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run scripts/control-plane up: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        match line.strip_prefix("KUBECONFIG=") {
            Some(path) if output.status.success() => Self {
                dir,
                kubeconfig: PathBuf::from(path),
                apiserver_port: ports[0],
            },
            _ => panic!(
                "the dedicated control plane in {} did not start ({:?}):\n{}",
                dir.display(),
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(repo_root().join("scripts/control-plane"))
            .args(args)
            .env("OSBUILD_CONTROL_PLANE_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/control-plane {args:?}: {e}"))
    }

    async fn component(&self, action: &'static str, component: &'static str) {
        let dir = self.dir.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(repo_root().join("scripts/control-plane"))
                .args([action, component])
                .env("OSBUILD_CONTROL_PLANE_DIR", &dir)
                .stdin(Stdio::null())
                .output()
        })
        .await
        .expect("join")
        .expect("run scripts/control-plane");
        assert!(
            output.status.success(),
            "scripts/control-plane {action} {component} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops one component (etcd, kube-apiserver, kube-scheduler): SIGTERM, SIGKILL after 10 s.
    pub async fn stop(&self, component: &'static str) {
        self.component("stop", component).await
    }

    /// Starts a stopped component with the flags of `up` and waits until it is healthy.
    pub async fn start(&self, component: &'static str) {
        self.component("start", component).await
    }

    pub async fn restart(&self, component: &'static str) {
        self.component("restart", component).await
    }

    pub fn apiserver_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.apiserver_port))
    }

    /// An admin client of this control plane.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig).await
    }

    /// A [`TestEnv`] on this control plane: a namespace (with its `default` ServiceAccount) and a prefix.
    pub async fn env(&self, test: &str) -> TestEnv {
        TestEnv::with_client(self.client().await, test).await
    }

    /// A copy of the admin kubeconfig whose server is `127.0.0.1:port` (e.g. a [`Proxy`]); the serving
    /// certificate has an IP SAN for 127.0.0.1, so TLS still verifies.
    pub fn kubeconfig_via(&self, port: u16) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).expect("admin kubeconfig");
        let from = format!("https://127.0.0.1:{}", self.apiserver_port);
        assert!(text.contains(&from), "kubeconfig does not name {from}");
        let path = self.dir.join(format!("via-{port}.kubeconfig"));
        std::fs::write(
            &path,
            text.replace(&from, &format!("https://127.0.0.1:{port}")),
        )
        .expect("write kubeconfig");
        path
    }

    /// A ServiceAccount `name` in the test namespace with the controller's permissions (nodes, pods, events),
    /// and a kubeconfig that authenticates as it with a token from the TokenRequest API.
    pub async fn service_account_kubeconfig(&self, env: &TestEnv, name: &str) -> PathBuf {
        let client = &env.client;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &env.namespace);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        accounts
            .create(&PostParams::default(), &sa)
            .await
            .expect("create service account");
        let role = format!("{}-{name}", env.prefix);
        let cluster_role: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": role},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
            ],
        }))
        .unwrap();
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &cluster_role)
            .await
            .expect("create cluster role");
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": env.namespace}],
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("create cluster role binding");
        let path = self.dir.join(format!("{name}.kubeconfig"));
        crate::support::token_kubeconfig(client, &self.kubeconfig, &env.namespace, name, &path)
            .await;
        path
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let output = self.script(&["down"]);
        if !output.status.success() {
            eprintln!(
                "scripts/control-plane down for {} failed:\n{}",
                self.dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            return;
        }
        if std::env::var_os("OSBUILD_KEEP_FAULT_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let parsed = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", kubeconfig.display()));
    Client::try_from(config).expect("kube client")
}

/// A client that sees 429/503/504 at once instead of retrying them (kube's default retry policy).
pub async fn client_without_retries(kubeconfig: &Path) -> Client {
    let parsed = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .expect("config");
    config.default_retry = false;
    Client::try_from(config).expect("kube client")
}

/// Sum of the API server's metric series `name` whose labels include every `(key, value)`.
pub async fn apiserver_metric(client: &Client, name: &str, labels: &[(&str, &str)]) -> f64 {
    let request = kube::core::Request::new("")
        .get("metrics", &GetParams::default())
        .expect("request");
    let text = client.request_text(request).await.expect("GET /metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            (series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

// ------------------------------------------------------------------------------------------ proxy

/// A TCP proxy to the API server. `cut` closes every connection and refuses new ones until `heal`.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (cut, connections) = (cut.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    let mut connections = connections.lock().unwrap();
                    connections.retain(|t| !t.is_finished());
                    connections.push(task);
                }
            })
        };
        Self {
            port,
            cut,
            connections,
            accept,
        }
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

// ------------------------------------------------------------------------------------------ auditor

/// Our labels on a node.
pub fn ours(node: &Node) -> BTreeMap<String, String> {
    let keys = LabelKeys::default();
    node.labels()
        .iter()
        .filter(|(k, _)| keys.is_ours(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What the controller should put on the node as it is now (`None`: leave it alone, not reported yet).
pub fn desired(node: &Node) -> Option<BTreeMap<String, String>> {
    plan(node, &LabelKeys::default()).desired
}

/// Watches the nodes of a selector for the whole test. Our labels on a node must always be empty or the
/// complete desired set of some state the node has been seen in (labels lag their inputs, so an older
/// state's set is fine): anything else is a wrong label.
pub struct Auditor {
    state: Arc<Mutex<AuditState>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct AuditState {
    acceptable: HashMap<String, Vec<BTreeMap<String, String>>>,
    wrong: Vec<String>,
    observed: usize,
}

impl Auditor {
    pub fn start(client: Client, selector: &str) -> Self {
        let state: Arc<Mutex<AuditState>> = Arc::default();
        let api: Api<Node> = Api::all(client);
        let config = watcher::Config::default().labels(selector);
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut events = pin!(watcher(api, config).default_backoff());
                while let Some(event) = events.next().await {
                    if let Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = event
                    {
                        state.lock().unwrap().observe(&node);
                    }
                }
            })
        };
        Self { state, task }
    }

    pub fn wrong(&self) -> Vec<String> {
        self.state.lock().unwrap().wrong.clone()
    }

    pub fn observed(&self) -> usize {
        self.state.lock().unwrap().observed
    }

    pub fn assert_no_wrong_labels(&self) {
        let wrong = self.wrong();
        assert!(
            wrong.is_empty(),
            "{} wrong label sets seen:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
}

impl AuditState {
    fn observe(&mut self, node: &Node) {
        self.observed += 1;
        let name = node.name_any();
        let acceptable = self.acceptable.entry(name.clone()).or_default();
        if let Some(desired) = desired(node)
            && !acceptable.contains(&desired)
        {
            acceptable.push(desired);
        }
        let ours = ours(node);
        if !ours.is_empty() && !acceptable.contains(&ours) {
            let kernel = node
                .status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kernel_version.clone())
                .unwrap_or_default();
            self.wrong.push(format!(
                "{name} (kernelVersion {kernel:?}, rv {:?}): {ours:?}",
                node.resource_version()
            ));
        }
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether every node of the selector carries exactly the labels it should (nodes not reported yet are
/// skipped); returns the names of those that do not.
pub async fn unconverged(env: &TestEnv) -> Vec<String> {
    let nodes = env
        .nodes()
        .list(&ListParams::default().labels(&env.node_selector()))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    if nodes.is_empty() {
        return vec!["(no nodes listed)".into()];
    }
    nodes
        .iter()
        .filter(|n| desired(n).is_some_and(|d| d != ours(n)))
        .map(|n| n.name_any())
        .collect()
}
