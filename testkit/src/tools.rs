//! The real tools tests drive, built or fetched by the project's own scripts and cached by version (helm,
//! prometheus, the Prometheus Operator CRDs), and kubectl runs against any control plane.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cluster::{kubeconfig, kubectl, kubectl_with_stdin, repo_root};

/// Runs a build script of the repository (e.g. `tests/helm/build.sh`) and returns the path its last stdout
/// line names; fails the test, never skips, when the script fails or names nothing that exists.
pub fn built_by(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(repo_root().join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default());
    assert!(
        out.status.success() && path.exists(),
        "{script} {args:?} failed ({:?}); these tests need it and never skip",
        out.status.code()
    );
    path
}

/// The built kubectl against the control plane of `kubeconfig`, fed `stdin`: (success, stdout, stderr).
pub fn kubectl_on(kubeconfig: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(kubectl())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
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
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs (generated from its Go module by
/// `tests/helm/crds.sh`), applied to the shared control plane and established.
pub fn ensure_monitoring_crds() {
    let dir = built_by("tests/helm/crds.sh", &[]);
    let mut yaml = String::new();
    for name in [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ] {
        yaml += &std::fs::read_to_string(dir.join(name)).expect("CRD file");
        yaml += "\n---\n";
    }
    kubectl_with_stdin(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=osbuild-tests",
            "-f",
            "-",
        ],
        &yaml,
    );
    for crd in ["servicemonitors", "prometheusrules"] {
        let (ok, _, err) = kubectl_on(
            kubeconfig(),
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}.monitoring.coreos.com"),
            ],
            "",
        );
        assert!(ok, "CRD {crd} not established: {err}");
    }
}
