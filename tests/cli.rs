//! The offline subcommands as users and scripts call them: exit codes, stderr, and both output modes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(args)
        .env_remove("OSBUILD_OSBUILD_LABEL")
        .env_remove("OSBUILD_LABEL_PREFIX")
        .output()
        .expect("the binary runs")
}

fn json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn explain_json_has_the_documented_fields() {
    // The seed's first node.
    let v = json(&[
        "explain",
        "--output",
        "json",
        "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
    ]);
    assert_eq!(v["windows"], true);
    assert_eq!(v["build"], 14393);
    assert_eq!(v["revision"], 1715);
    assert_eq!(v["release"], "ltsc2016");
    assert_eq!(v["osbuild"], "14393.1715");
    assert_eq!(v["labels"]["beta.kubernetes.io/osbuild"], "14393.1715");
    assert_eq!(v["warnings"], Value::Array(vec![]));
}

#[test]
fn explain_linux_and_empty_exit_zero() {
    let v = json(&["explain", "-o", "json", "5.15.0-1049-azure"]);
    assert_eq!(v["windows"], false);
    assert_eq!(v["build"], Value::Null);
    assert_eq!(v["osbuild"], Value::Null);
    assert_eq!(v["labels"], serde_json::json!({}));
    let v = json(&["explain", "-o", "json", ""]);
    assert_eq!(v["kind"], "not-reported");
}

#[test]
fn explain_missing_revision_has_no_osbuild_and_a_warning() {
    let v = json(&["explain", "-o", "json", "10.0.14393"]);
    assert_eq!(v["osbuild"], Value::Null);
    assert!(v["labels"].get("beta.kubernetes.io/osbuild").is_none());
    assert!(v["warnings"][0].as_str().unwrap().contains("revision"));
}

#[test]
fn explain_unparseable_exits_one_with_one_line() {
    for mode in ["text", "json"] {
        let out = run(&["explain", "-o", mode, "10.0.banana"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("build \"banana\" is not a number"), "{err}");
    }
}

#[test]
fn explain_honours_label_flags_and_env() {
    let v = json(&[
        "explain",
        "-o",
        "json",
        "--label-prefix",
        "example.com",
        "10.0.20348.1",
    ]);
    assert_eq!(v["labels"]["example.com/release"], "ltsc2022");
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(["explain", "-o", "json", "10.0.20348.1"])
        .env("OSBUILD_OSBUILD_LABEL", "example.com/osbuild")
        .env("OSBUILD_LABEL_PREFIX", "windows.example.org")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["labels"]["example.com/osbuild"], "20348");
    let out = run(&["explain", "--label-prefix", "Not Valid", "10.0.20348.1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a DNS subdomain"));
}

#[test]
fn explain_text_lists_labels() {
    let out = run(&["explain", "10.0.17763.3887"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.contains("release:       ltsc2019"), "{text}");
    assert!(text.contains("beta.kubernetes.io/osbuild=17763"), "{text}");
}

#[test]
fn compat_both_modes() {
    let v = json(&[
        "compat",
        "--host",
        "10.0.26100.32995",
        "--image",
        "ltsc2022",
        "-o",
        "json",
    ]);
    assert_eq!(v["process_isolation"], true);
    assert_eq!(v["hyperv_isolation"], true);
    assert!(v["reason"].as_str().unwrap().contains("20348"));
    // The seed's WS2016 revision example.
    let v = json(&[
        "compat",
        "--host",
        "14393.1914",
        "--image",
        "10.0.14393.1944",
        "-o",
        "json",
    ]);
    assert_eq!(v["process_isolation"], false);
    let out = run(&["compat", "--host", "17763", "--image", "20348"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("process isolation: no\nHyper-V isolation: no\nreason:"));
}

#[test]
fn compat_rejects_linux_and_garbage() {
    let out = run(&["compat", "--host", "5.15.0-1049-azure", "--image", "17763"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("host \"5.15.0-1049-azure\" is a Linux kernel")
    );
    let out = run(&["compat", "--host", "17763"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap usage error: --image is required"
    );
}

#[test]
fn classify_argument_and_stdin() {
    // containerd's wording, from DOMAIN.md §4.
    let message = "failed to create containerd task: failed to create shim task: hcs::CreateComputeSystem 9c1: The container operating system does not match the host operating system.: unknown";
    let v = json(&["classify", "-o", "json", message]);
    assert_eq!(v["os_mismatch"], true);
    assert_eq!(v["variant"], "containerd");

    let mut child = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .args(["classify", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"failure in a Windows system call: The operating system of the container does not\n match the operating system of the host. (0xc0370101)")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        "os mismatch: yes (variant hcs-0xc0370101)"
    );

    let v = json(&["classify", "-o", "json", "Back-off pulling image"]);
    assert_eq!(v["os_mismatch"], false);
    assert_eq!(v["variant"], Value::Null);
}

#[test]
fn run_refuses_bad_configuration_with_exit_2_and_one_line() {
    for (flag, value, expected) in [
        ("--label-prefix", "Not_A_Domain", "not a DNS subdomain"),
        (
            "--osbuild-label",
            "bad key!",
            "not a valid Kubernetes label key",
        ),
        ("--resync-interval", "10d", "unit must be s, m or h"),
        ("--metrics-addr", "localhost", "invalid socket address"),
    ] {
        let out = run(&["run", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{flag} {value}: {err}");
        if flag.contains("label") {
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_osbuild-controller"))
        .arg("run")
        .env("OSBUILD_LABEL_PREFIX", "UPPER.example.com")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "flags also come from OSBUILD_* variables"
    );
}
