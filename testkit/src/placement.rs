//! The control plane of the placement tests: the shipped manifests, with the cluster-wide placement
//! MutatingAdmissionPolicy, applied with kubectl as a user installs them. Never the shared control plane:
//! there the policy would gate every other test's Windows pods. `OSBUILD_PLACEMENT_KUBECONFIG` (set by
//! `scripts/test`), else one started in `target/placement-cp` for this test process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cluster::{kubeconfig_from_up, repo_root};
use crate::tools::kubectl_on;
use crate::wait::TIMEOUT;

/// The scheduling gate the policy adds to new Windows pods.
pub const PLACEMENT_GATE: &str = "osbuild-controller.io/image-os";

/// The placement control plane's admin kubeconfig, with the manifests applied and the policy in force.
pub fn placement_kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        let path = match std::env::var_os("OSBUILD_PLACEMENT_KUBECONFIG").filter(|p| !p.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => {
                let output = Command::new(repo_root().join("scripts/control-plane"))
                    .arg("up")
                    .env("OSBUILD_CONTROL_PLANE_DIR", repo_root().join("target/placement-cp"))
                    .env_remove("OSBUILD_ETCD_DATA_DIR")
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("run scripts/control-plane up");
                kubeconfig_from_up(&output).unwrap_or_else(|| {
                    panic!(
                        "the placement control plane did not start (exit {:?}); these tests never skip",
                        output.status.code()
                    )
                })
            }
        };
        let manifests = repo_root().join("manifests");
        let rendered = kubectl(&path, &["kustomize", manifests.to_str().unwrap()], "");
        kubectl(
            &path,
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &rendered,
        );
        wait_for_policy(&path);
        path
    })
}

/// The API server loads a new policy asynchronously: wait until a Windows pod (a server-side dry run, so
/// nothing is stored) comes back gated, or fail with what it returned.
fn wait_for_policy(kubeconfig: &Path) {
    let probe = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "policy-probe", "namespace": "default"},
        "spec": {"os": {"name": "windows"}, "containers": [{"name": "c", "image": "probe"}]}})
    .to_string();
    let start = Instant::now();
    loop {
        let out = kubectl(
            kubeconfig,
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            &probe,
        );
        if out.contains(PLACEMENT_GATE) {
            return;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the admission policy never gated a Windows pod: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> String {
    let (ok, stdout, stderr) = kubectl_on(kubeconfig, args, stdin);
    assert!(ok, "kubectl {args:?} failed: {stderr}");
    stdout
}
