//! Test harness for integration tests against the real control plane (etcd, kube-apiserver, kube-scheduler
//! built from Go modules; see docs/control-plane.md).
//!
//! - The control plane comes from `KUBECONFIG` (set by `scripts/test`), or is started once per test binary
//!   with `scripts/control-plane up`. If it cannot start, the test fails with the reason: never a skip.
//! - Each test gets a [`TestEnv`]: a client, a namespace of its own and a unique prefix. Its Nodes carry the
//!   label `osbuild-test/run=<prefix>`, and the controllers it starts watch only those, so tests running in
//!   parallel never see each other's nodes.
//! - There is no kubelet: helpers set Node and Pod status through the status subresource, as a kubelet would.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The label that scopes a test's Nodes (and the controllers it starts) to that test.
pub const RUN_LABEL: &str = "osbuild-test/run";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The admin kubeconfig of the control plane: `KUBECONFIG`, or one started for this test binary.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(path);
        }
        let output = Command::new(repo_root().join("scripts/control-plane"))
            .arg("up")
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/control-plane up: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        match line.strip_prefix("KUBECONFIG=") {
            Some(path) if output.status.success() => PathBuf::from(path),
            _ => panic!(
                "the control plane did not start (scripts/control-plane up exited {:?}; last line {line:?}); \
                 integration tests need it and never skip",
                output.status.code()
            ),
        }
    })
}

/// Writes to `path` a kubeconfig for the control plane of `admin_kubeconfig` that authenticates as the
/// existing ServiceAccount `namespace/name`, with a token from the TokenRequest API: the identity the
/// controller has in a cluster.
pub async fn token_kubeconfig(
    client: &Client,
    admin_kubeconfig: &Path,
    namespace: &str,
    name: &str,
    path: &Path,
) {
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
        .status
        .expect("token status")
        .token;
    let admin = Kubeconfig::read_from(admin_kubeconfig).expect("admin kubeconfig");
    let cluster = serde_json::to_value(&admin.clusters[0]).expect("cluster entry");
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": admin.clusters[0].name, "user": name}}],
        "current-context": name,
    });
    // JSON is YAML, so every kubeconfig reader takes it.
    std::fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).expect("write kubeconfig");
}

/// The kubectl built with the control plane (same cache layout as tests/control-plane/build.sh).
pub fn kubectl() -> PathBuf {
    let versions = std::fs::read_to_string(repo_root().join("tests/control-plane/versions.env"))
        .expect("tests/control-plane/versions.env");
    let version = |key: &str| {
        versions
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} missing from versions.env"))
            .trim()
            .to_owned()
    };
    let cache = std::env::var_os("OSBUILD_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/osbuild-controller")
        });
    let path = cache
        .join("control-plane")
        .join(format!(
            "k8s-{}-etcd-{}",
            version("K8S_VERSION"),
            version("ETCD_VERSION")
        ))
        .join("kubectl");
    assert!(
        path.exists(),
        "kubectl not built at {} (scripts/control-plane up builds it)",
        path.display()
    );
    path
}

/// Runs the built kubectl against the test control plane, feeding `stdin`; returns stdout or fails the test.
pub fn kubectl_with_stdin(args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(kubectl())
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to kubectl");
    let out = child.wait_with_output().expect("kubectl output");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub async fn client() -> Client {
    let path = kubeconfig();
    let parsed = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", path.display()));
    let client = Client::try_from(config).expect("kube client");
    // Fail here, with the reason, when the server is not there.
    client.apiserver_version().await.unwrap_or_else(|e| {
        panic!(
            "the control plane at {} does not answer: {e}",
            kubeconfig().display()
        )
    });
    client
}

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
        Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &sa)
            .await
            .expect("create default service account");
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
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        accounts
            .create(&PostParams::default(), &sa)
            .await
            .expect("create service account");
        let path = std::env::temp_dir().join(format!("{}-{name}.kubeconfig", self.prefix));
        token_kubeconfig(&self.client, kubeconfig(), &self.namespace, name, &path).await;
        path
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

/// Polls `check` until it returns `Some`, or fails the test after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `check` stays true for `period` (for "nothing happens" assertions).
pub async fn consistently<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        assert!(check().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback port (bound and released; the race with other processes is negligible here).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `osbuild-controller run` as a child process, scoped to one test's nodes. SIGTERM on drop.
pub struct Controller {
    child: Child,
    pub metrics_addr: String,
    pub log_path: PathBuf,
}

impl Controller {
    /// Starts the controller with `--node-selector` for this test's nodes and `extra` flags, and waits until
    /// /readyz answers 200.
    pub async fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let controller = Self::spawn(env, extra);
        controller.wait_ready().await;
        controller
    }

    /// Starts the controller without waiting for readiness.
    pub fn spawn(env: &TestEnv, extra: &[&str]) -> Self {
        Self::spawn_with_kubeconfig(env, kubeconfig(), extra)
    }

    /// Starts the controller with another identity (e.g. a ServiceAccount token), without waiting.
    pub fn spawn_with_kubeconfig(env: &TestEnv, kubeconfig: &Path, extra: &[&str]) -> Self {
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let log_path = std::env::temp_dir().join(format!(
            "osbuild-controller-{}-{}.log",
            env.prefix,
            free_port()
        ));
        let log = std::fs::File::create(&log_path).expect("controller log file");
        let child = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
            .arg("run")
            .args(["--node-selector", &env.node_selector()])
            .args(["--metrics-addr", &metrics_addr])
            .args(["--log-filter", "info,osbuild_controller=debug"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start osbuild-controller run");
        Self {
            child,
            metrics_addr,
            log_path,
        }
    }

    pub async fn wait_ready(&self) {
        self.wait_ready_within(TIMEOUT).await
    }

    pub async fn wait_ready_within(&self, timeout: Duration) {
        let addr = self.metrics_addr.clone();
        let log = self.log_path.clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = http_get(&addr, "/readyz").await {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "controller not ready after {TIMEOUT:?}; log:\n{}",
                    read_log(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics_addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} from the controller: {e}"))
    }

    /// The value of a metric series, e.g. `metric("osbuild_label_writes_total", &[])`; `None` if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        metric_value(&body, name, labels)
    }

    /// Waits until a metric series has `expected` as its value. Use it for counters of writes: a change can
    /// be visible in the API before the controller has processed the response and counted it.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        eventually(
            &format!("{name}{labels:?} == {expected}"),
            TIMEOUT,
            || async { (self.metric(name, labels).await? == expected).then_some(()) },
        )
        .await;
    }

    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let status = self.child.wait().expect("wait for the controller");
        std::mem::forget(self);
        status
    }

    /// SIGKILL: the process dies without any clean-up (a crashed or evicted leader).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

fn read_log(path: &Path) -> String {
    std::fs::File::open(path)
        .map(|f| {
            BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A minimal HTTP/1.0 GET, so tests need no HTTP client dependency.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Finds `name{labels}` in a Prometheus text exposition.
pub fn metric_value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all_match = labels.iter().all(|(k, v)| {
                series_labels
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            all_match.then(|| value.parse().ok()).flatten()
        })
}
