//! `osbuild-controller run` as a child process of the test, plus small process and HTTP helpers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::kubeconfig;
use crate::env::TestEnv;
use crate::metrics::Scrape;
use crate::wait::{TIMEOUT, eventually};

/// The controller binary cargo built next to this test (or example): `target/<profile>/osbuild-controller`,
/// or `OSBUILD_CONTROLLER_BIN`.
pub fn controller_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OSBUILD_CONTROLLER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> or target/<profile>/examples/<example>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/");
    let path = profile_dir.join("osbuild-controller");
    assert!(
        path.exists(),
        "controller binary {} not built (cargo builds it with the integration tests)",
        path.display()
    );
    path
}

/// `n` distinct free loopback ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

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
        let child = Command::new(controller_binary())
            .arg("run")
            .args(["--node-selector", &env.node_selector()])
            .args(["--metrics-addr", &metrics_addr])
            .args(["--log-filter", "info,osbuild_controller=debug"])
            // JSON, so tests assert on structured fields (message, span fields), never on wording.
            .args(["--log-format", "json"])
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
        self.scrape().await.value(name, labels)
    }

    /// One scrape of `/metrics`, parsed.
    pub async fn scrape(&self) -> Scrape {
        let (_, body) = self.get("/metrics").await;
        Scrape::parse(&body)
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

    /// The log as text, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The log's JSON records (one per line; `message`, the event's fields, and `spans` with the fields of
    /// the spans it happened in, e.g. the `node` of a reconcile).
    pub fn log_records(&self) -> Vec<serde_json::Value> {
        read_log(&self.log_path)
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The first log record with this `message` for which `also` holds.
    pub fn log_record(
        &self,
        message: &str,
        also: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.log_records()
            .into_iter()
            .find(|r| r["message"] == message && also(r))
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

/// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// A log file's content (empty when missing).
pub fn read_log(path: &Path) -> String {
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
