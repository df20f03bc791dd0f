//! The cluster a test talks to: the shared control plane (from `KUBECONFIG`, or started once per test
//! process), clients (admin or a ServiceAccount's token), and the built kubectl.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{GetParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

/// The label that scopes a test's Nodes (and the controllers it starts) to that test.
pub const RUN_LABEL: &str = "osbuild-test/run";

/// The repository's root (the testkit lives in `testkit/`).
pub fn repo_root() -> PathBuf {
    let kit = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    kit.parent().map(Path::to_path_buf).unwrap_or(kit)
}

/// The binary cache root shared with scripts/control-plane and the other build scripts.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("OSBUILD_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/osbuild-controller")
        })
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
        kubeconfig_from_up(&output).unwrap_or_else(|| {
            panic!(
                "the control plane did not start (scripts/control-plane up exited {:?}); integration tests \
                 need it and never skip",
                output.status.code()
            )
        })
    })
}

/// The kubeconfig `scripts/control-plane up` names on its last line (`KUBECONFIG=<path>`) when it succeeded.
pub fn kubeconfig_from_up(output: &std::process::Output) -> Option<PathBuf> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last()?.strip_prefix("KUBECONFIG=")?;
    output.status.success().then(|| PathBuf::from(path))
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
    let path = cache_dir()
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
    let (ok, stdout, stderr) = crate::tools::kubectl_on(kubeconfig(), args, stdin);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}

/// An admin client of the shared control plane; fails the test when the server does not answer.
pub async fn client() -> Client {
    let client = client_from(kubeconfig()).await;
    // Fail here, with the reason, when the server is not there.
    client.apiserver_version().await.unwrap_or_else(|e| {
        panic!(
            "the control plane at {} does not answer: {e}",
            kubeconfig().display()
        )
    });
    client
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
    crate::metrics::Scrape::parse(&text).sum(name, labels)
}
