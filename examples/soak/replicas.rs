//! The three controller replicas: each its own ServiceAccount, its own proxy to the API server (so one
//! replica's watches can be cut), killed, paused and restarted by the faults; sampled for health.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use osbuild_testkit::faults::Proxy;
use osbuild_testkit::{controller_binary, free_port, signal};

pub const NAMES: [&str; 3] = ["a", "b", "c"];

/// Resident memory in MiB (`/proc/PID/status`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// `VmRSS`: what `ps` and the kubelet's working set start from.
    pub rss: f64,
    /// `RssAnon`: heap and stacks.
    pub anon: f64,
    /// `RssFile`: pages of mapped files, here the static binary's code and data.
    pub file: f64,
}

pub struct Replica {
    pub name: &'static str,
    kubeconfig: PathBuf,
    pub proxy: Proxy,
    child: Option<Child>,
    pub incarnation: u32,
    pub metrics_addr: String,
    pub log_dir: PathBuf,
    /// Set by a fault that kills the process; any other exit is a violation.
    pub killed: bool,
    pub paused: bool,
}

/// The flags every replica runs with (besides identity, metrics address and kubeconfig).
pub struct Flags {
    pub selector: String,
    pub namespace: String,
    pub lease_duration: Duration,
    /// The plain-HTTP test registry (`--registry-insecure`) and the TLS one's CA (`--registry-ca-file`).
    pub registry_insecure: String,
    pub registry_ca: String,
}

impl Replica {
    pub fn new(name: &'static str, kubeconfig: PathBuf, proxy: Proxy, log_dir: &Path) -> Self {
        Self {
            name,
            kubeconfig,
            proxy,
            child: None,
            incarnation: 0,
            metrics_addr: String::new(),
            log_dir: log_dir.to_owned(),
            killed: false,
            paused: false,
        }
    }

    /// The identity in the Lease: a new "pod name" per incarnation, as a Deployment's replacement pod has.
    pub fn identity(&self) -> String {
        format!("soak-{}-{}", self.name, self.incarnation)
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("replica-{}-{}.log", self.name, self.incarnation))
    }

    pub fn spawn(&mut self, flags: &Flags) {
        self.incarnation += 1;
        self.killed = false;
        self.paused = false;
        self.metrics_addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(self.log_path()).expect("replica log file");
        let child = replica_command()
            .arg("run")
            .args(["--node-selector", &flags.selector])
            .args(["--namespace", &flags.namespace])
            .args(["--metrics-addr", &self.metrics_addr])
            .args(["--log-format", "json", "--log-filter", "info"])
            .arg("--leader-elect")
            .args(["--lease-name", "osbuild-controller"])
            .args(["--lease-namespace", &flags.namespace])
            .args([
                "--lease-duration",
                &format!("{}s", flags.lease_duration.as_secs()),
            ])
            .args(["--pod-name", &self.identity()])
            // Labels overwritten by hand are taken back, so every node converges (docs/labels.md).
            .arg("--force-conflicts")
            // Placement on (the default), reading the test registries.
            .args(["--registry-insecure", &flags.registry_insecure])
            .args(["--registry-ca-file", &flags.registry_ca])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start osbuild-controller run");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no clean-up, no release of the Lease.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.killed = true;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
            self.paused = false;
        }
    }

    /// `Some(description)` if the process has exited on its own since the last check.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!(
                    "replica {} (incarnation {}) exited on its own: {status}; log {}",
                    self.name,
                    self.incarnation,
                    self.log_path().display()
                ))
            }
            _ => None,
        }
    }

    /// The process's resident memory in MiB, from /proc: in all, anonymous (the heap: what a leak grows) and
    /// file-backed (the binary's pages, touched as code runs for the first time: bounded by its size).
    pub fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let mib = |field: &str| -> Option<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix(field))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(kib / 1024.0)
        };
        Some(Memory {
            rss: mib("VmRSS:")?,
            anon: mib("RssAnon:")?,
            file: mib("RssFile:")?,
        })
    }

    /// SIGTERM and the exit status (a clean shutdown is part of process health).
    pub fn terminate(&mut self) -> Option<String> {
        let mut child = self.child.take()?;
        if self.paused {
            signal(child.id(), "CONT");
        }
        signal(child.id(), "TERM");
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return (!status.success()).then(|| {
                    format!(
                        "replica {} exited with {status} after SIGTERM; log {}",
                        self.name,
                        self.log_path().display()
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Some(format!(
            "replica {} did not stop within 10 s of SIGTERM",
            self.name
        ))
    }
}

/// The controller's command, or with `OSBUILD_SOAK_WRAPPER` set (opt-in, for profiling: e.g. a script that
/// starts heaptrack's interpreter and `exec`s its arguments under its preload) that program with the
/// controller's path as its first argument. The wrapper must `exec` the controller, so that the pid the
/// faults signal and the RSS sampler reads is the controller's own.
fn replica_command() -> Command {
    match std::env::var_os("OSBUILD_SOAK_WRAPPER").filter(|w| !w.is_empty()) {
        Some(wrapper) => {
            let mut command = Command::new(wrapper);
            command.arg(controller_binary());
            command
        }
        None => Command::new(controller_binary()),
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
