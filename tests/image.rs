//! The container image that scripts/image assembles (an OCI image layout, no registry, no daemon), checked
//! as users and their runtimes see it, and started with a real OCI runtime against the real control plane:
//!
//! - the layout holds one multi-arch image index with a linux image per built architecture, each running as
//!   65532:65532 with the binary as entrypoint and `run` as its command, OCI labels, CA certificates, and a
//!   CycloneDX SBOM attached to the index;
//! - umoci (Debian) unpacks each platform's image into a runtime bundle, and runc (Debian) runs it with a
//!   read-only root filesystem, as 65532, with no capabilities and no new privileges: the controller labels
//!   a Windows node and answers /readyz. arm64 runs under qemu user-mode emulation (binfmt_misc).
//!
//! The image comes from `scripts/image` (scripts/test runs it first; `scripts/image --arch all` for both
//! architectures), in `$OSBUILD_IMAGE_DIR` or `target/image`. Nothing is skipped: a missing image, runc,
//! umoci or emulator fails the test with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{TIMEOUT, TestEnv, eventually, http_get};

fn image_dir() -> PathBuf {
    std::env::var_os("OSBUILD_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/image"))
}

/// The OCI image layout, or a failure that says how to make it.
fn layout() -> PathBuf {
    let layout = image_dir().join("layout");
    assert!(
        layout.join("index.json").exists(),
        "no image at {} (run scripts/image first; scripts/test does)",
        layout.display()
    );
    layout
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs/sha256").join(hex)
}

fn blob(layout: &Path, digest: &str) -> Value {
    read_json(&blob_path(layout, digest))
}

/// The descriptor in index.json named `name` (org.opencontainers.image.ref.name).
fn named(layout: &Path, name: &str) -> Value {
    let index = read_json(&layout.join("index.json"));
    index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in index.json: {index}"))
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The architectures in the multi-arch index.
fn architectures(layout: &Path) -> Vec<String> {
    let index = named(layout, VERSION);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let digest = index["digest"].as_str().unwrap();
    blob(layout, digest)["manifests"]
        .as_array()
        .expect("the index lists manifests")
        .iter()
        .map(|m| {
            assert_eq!(m["platform"]["os"], "linux", "{m}");
            m["platform"]["architecture"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn the_layout_has_a_multi_arch_index_of_locked_down_images_and_an_sbom() {
    let layout = layout();
    let arches = architectures(&layout);
    assert!(arches.contains(&"amd64".to_owned()), "{arches:?}");
    let index_desc = named(&layout, VERSION);
    let index = blob(&layout, index_desc["digest"].as_str().unwrap());
    assert_eq!(
        index["annotations"]["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );
    for entry in index["manifests"].as_array().unwrap() {
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        // The per-architecture tag names the same manifest as the index entry.
        assert_eq!(
            named(&layout, &format!("{VERSION}-{arch}"))["digest"],
            entry["digest"]
        );
        let manifest = blob(&layout, entry["digest"].as_str().unwrap());
        let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], arch);
        let c = &config["config"];
        assert_eq!(
            c["User"], "65532:65532",
            "non-root, as the Deployment's runAsUser"
        );
        assert_eq!(c["Entrypoint"], json!(["/osbuild-controller"]));
        assert_eq!(c["Cmd"], json!(["run"]));
        assert!(c["ExposedPorts"]["8080/tcp"].is_object(), "{c}");
        for (label, value) in [
            ("org.opencontainers.image.title", "osbuild-controller"),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
            ("org.opencontainers.image.version", VERSION),
            (
                "org.opencontainers.image.source",
                "https://github.com/osbuild-controller/osbuild-controller",
            ),
        ] {
            assert_eq!(c["Labels"][label], value, "label {label}");
        }
        assert!(
            c["Labels"]["org.opencontainers.image.revision"]
                .as_str()
                .is_some_and(|r| r.len() == 40),
            "revision label: {c}"
        );
        assert_eq!(manifest["layers"].as_array().map(Vec::len), Some(1));
    }

    // The SBOM: an OCI 1.1 artifact whose subject is the index, with the crate graph in CycloneDX.
    let sbom_desc = named(&layout, &format!("{VERSION}-sbom"));
    assert_eq!(sbom_desc["artifactType"], "application/vnd.cyclonedx+json");
    let artifact = blob(&layout, sbom_desc["digest"].as_str().unwrap());
    assert_eq!(artifact["subject"]["digest"], index_desc["digest"]);
    assert_eq!(
        artifact["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let sbom = read_json(&blob_path(
        &layout,
        artifact["layers"][0]["digest"].as_str().unwrap(),
    ));
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    let components: Vec<&str> = sbom["components"]
        .as_array()
        .expect("SBOM components")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for dependency in [
        "kube-client",
        "tokio",
        "rustls",
        "k8s-openapi",
        "prometheus",
    ] {
        assert!(components.contains(&dependency), "{dependency} in the SBOM");
    }
    assert_eq!(sbom["metadata"]["component"]["name"], "osbuild-controller");
}

/// A tool the test needs, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "{name} is not installed (apt-get install {name}; scripts/test installs it)"
    );
    PathBuf::from(path)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A container started with runc; killed and deleted on drop.
struct Container {
    runc_root: PathBuf,
    id: String,
    log: PathBuf,
}

impl Container {
    fn runc(&self) -> Command {
        let mut cmd = Command::new(tool("runc"));
        cmd.arg("--root").arg(&self.runc_root);
        cmd
    }

    fn state(&self) -> Value {
        serde_json::from_str(&run(self.runc().args(["state", &self.id]))).expect("runc state")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["kill", &self.id, "TERM"])
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = self
            .runc()
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.runc_root);
    }
}

/// One line of /proc/PID/status, e.g. `Uid`.
fn proc_status(pid: u64, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Unpacks `VERSION-ARCH` with umoci, locks the runtime config down, starts it with runc against the test
/// control plane, and checks that the controller labels a Windows node and answers /readyz.
async fn runs_locked_down(arch: &str) {
    let layout = layout();
    let env = TestEnv::new(&format!("image-{arch}")).await;
    let work = std::env::temp_dir().join(format!("{}-bundle", env.prefix));
    let bundle = work.join("bundle");
    std::fs::create_dir_all(&work).unwrap();
    run(Command::new(tool("umoci"))
        .args(["unpack", "--image"])
        .arg(format!("{}:{VERSION}-{arch}", layout.display()))
        .arg(&bundle));

    // The runtime config umoci made from the image config, then what the Deployment asks for: read-only
    // root, no capabilities, no new privileges. The host network, so that the API server on 127.0.0.1 is
    // reachable; the kubeconfig bind-mounted read-only.
    let config_path = bundle.join("config.json");
    let mut config = read_json(&config_path);
    let process = &config["process"];
    assert_eq!(process["user"]["uid"], 65532, "the image's user");
    assert_eq!(process["user"]["gid"], 65532);
    assert_eq!(
        process["args"],
        json!(["/osbuild-controller", "run"]),
        "entrypoint and command"
    );
    let addr = format!("127.0.0.1:{}", support::free_port());
    let mut args = vec![json!("/osbuild-controller"), json!("run")];
    for a in [
        "--node-selector",
        &env.node_selector(),
        "--metrics-addr",
        &addr,
    ] {
        args.push(json!(a));
    }
    config["process"]["args"] = json!(args);
    config["process"]["terminal"] = json!(false);
    config["process"]["noNewPrivileges"] = json!(true);
    config["process"]["capabilities"] = json!({
        "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []
    });
    let env_list = config["process"]["env"].as_array_mut().expect("env");
    env_list.push(json!("KUBECONFIG=/var/run/osbuild/kubeconfig"));
    config["root"]["readonly"] = json!(true);
    config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
        .retain(|n| n["type"] != "network");
    // A copy of the kubeconfig that only the container's user can read, as a mounted Secret would be.
    let kubeconfig = work.join("kubeconfig");
    std::fs::copy(support::kubeconfig(), &kubeconfig).expect("copy kubeconfig");
    std::os::unix::fs::chown(&kubeconfig, Some(65532), Some(65532)).expect("chown kubeconfig");
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o400)).unwrap();
    config["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({
            "destination": "/var/run/osbuild/kubeconfig",
            "type": "bind",
            "source": kubeconfig,
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"]
        }));
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();

    let container = Container {
        runc_root: work.join("runc"),
        id: env.prefix.clone(),
        log: work.join("container.log"),
    };
    let log = std::fs::File::create(&container.log).unwrap();
    let status = container
        .runc()
        .args(["run", "--detach", "--bundle"])
        .arg(&bundle)
        .arg(&container.id)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .expect("runc run");
    assert!(status.success(), "runc run failed: {}", container.log());
    let state = container.state();
    assert_eq!(
        state["status"],
        "running",
        "{state}\ncontainer log:\n{}",
        container.log()
    );
    let pid = state["pid"].as_u64().expect("pid");

    // It is what the Deployment promises: uid/gid 65532, no capabilities at all, no new privileges, and a
    // read-only root filesystem.
    assert_eq!(
        proc_status(pid, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65532"; 4]
    );
    assert_eq!(
        proc_status(pid, "Gid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65532"; 4]
    );
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(proc_status(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("the root mount");
    assert!(
        root.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|x| x == "ro")),
        "root is read-only: {root}"
    );
    // The CA bundle is there for TLS to anything outside the cluster's own CA.
    let certs = std::fs::read_to_string(bundle.join("rootfs/etc/ssl/certs/ca-certificates.crt"))
        .expect("CA certificates in the image");
    assert!(certs.matches("BEGIN CERTIFICATE").count() > 100);

    // And it does its job: ready, and the Windows node labelled.
    let windows = env.create_windows_node("ws2022", "10.0.20348.2227").await;
    let ready = eventually("/readyz answers 200", TIMEOUT, || async {
        match http_get(&addr, "/readyz").await {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(ready.contains("[+] watch nodes: ok"), "{ready}");
    // the node is labelled from the container
    env.wait_label(&windows, "beta.kubernetes.io/osbuild", "20348")
        .await;
    let (_, metrics) = http_get(&addr, "/metrics").await.expect("metrics");
    assert!(
        !metrics.contains("osbuild_reconcile_errors_total"),
        "{metrics}\n{}",
        container.log()
    );
    let log = container.log();
    assert!(
        !log.contains("Permission denied") && !log.contains("Read-only file system"),
        "{log}"
    );

    // SIGTERM stops it cleanly (the kubelet's way).
    run(container.runc().args(["kill", &container.id, "TERM"]));
    eventually("the container stops on SIGTERM", TIMEOUT, || async {
        (container.state()["status"] == "stopped").then_some(())
    })
    .await;
    drop(container);
    let _ = std::fs::remove_dir_all(&work);
    env.cleanup().await;
}

#[tokio::test]
async fn the_amd64_image_runs_read_only_as_nonroot_without_capabilities_and_labels_a_node() {
    runs_locked_down("amd64").await;
}

/// arm64: built with `scripts/image --arch all` (cross-compiled) and run under qemu user-mode emulation
/// registered with binfmt_misc (`scripts/image-arm64 --prepare`); scripts/test does both before this test.
#[tokio::test]
async fn the_arm64_image_runs_under_qemu_read_only_as_nonroot_and_labels_a_node() {
    let layout = layout();
    assert!(
        architectures(&layout).contains(&"arm64".to_owned()),
        "no arm64 image in {} (scripts/image --arch all)",
        layout.display()
    );
    let binfmt = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    let registration = std::fs::read_to_string(binfmt).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; register qemu-aarch64 with the F flag (scripts/image-arm64 does)",
            binfmt.display()
        )
    });
    assert!(registration.starts_with("enabled"), "{registration}");
    assert!(
        registration
            .lines()
            .any(|l| l.starts_with("flags:") && l.contains('F')),
        "the F flag (interpreter opened at registration) lets containers use it: {registration}"
    );
    runs_locked_down("arm64").await;
}
