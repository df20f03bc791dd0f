//! A control plane of one test's own (fault tests, bench, soak): `scripts/control-plane up` in a state dir
//! of its own on free ports, single components stopped and started, `down` on drop. Its processes also die
//! with the test process: `up` is told the test's pid and tears the control plane down when it is gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kube::Client;
use serde_json::json;

use crate::cluster::{client_from, kubeconfig_from_up, repo_root};
use crate::env::{TestEnv, unique_prefix};
use crate::process::free_ports;

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
                .env(
                    "OSBUILD_CONTROL_PLANE_OWNER_PID",
                    std::process::id().to_string(),
                )
                .env_remove("OSBUILD_ETCD_DATA_DIR")
                .stdin(Stdio::null())
                .output()
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run scripts/control-plane up: {e}"));
        match kubeconfig_from_up(&output) {
            Some(kubeconfig) => Self {
                dir,
                kubeconfig,
                apiserver_port: ports[0],
            },
            None => panic!(
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
        env.grant(
            name,
            name,
            json!([
                {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch", "patch"]},
                {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch", "create", "patch", "update"]},
            ]),
        )
        .await;
        env.service_account_kubeconfig_on(&self.kubeconfig, name)
            .await
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
