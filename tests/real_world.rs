//! Table-driven tests over real strings from public issues and docs. Each entry of the data files carries
//! its source URL and a note on where in the source it appears:
//! - tests/data/kernel_versions.json: `status.nodeInfo.kernelVersion` values (and `docker info` kernel
//!   versions of the same era) with the build and revision they must parse to;
//! - tests/data/error_messages.json: container and sandbox failure messages, the OS mismatch in its
//!   wordings and look-alikes that must not be flagged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

use osbuild_controller::core::labels::{LabelKeys, is_valid_label_value, node_labels};
use osbuild_controller::core::mismatch::classify;
use osbuild_controller::core::version::{KernelVersion, parse_kernel_version};
use serde::Deserialize;

#[derive(Deserialize)]
struct KernelCase {
    kernel_version: String,
    windows: bool,
    build: Option<u32>,
    revision: Option<u32>,
    source: String,
}

#[derive(Deserialize)]
struct MessageCase {
    message: String,
    os_mismatch: bool,
    variant: Option<String>,
    source: String,
}

fn kernel_cases() -> Vec<KernelCase> {
    serde_json::from_str(include_str!("data/kernel_versions.json"))
        .expect("kernel_versions.json parses")
}

fn message_cases() -> Vec<MessageCase> {
    serde_json::from_str(include_str!("data/error_messages.json"))
        .expect("error_messages.json parses")
}

#[test]
fn real_kernel_versions_parse_to_their_build_and_revision() {
    let cases = kernel_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let got = parse_kernel_version(&case.kernel_version);
        let ok = match (&got, case.windows, case.build) {
            (Ok(KernelVersion::Windows(p)), true, Some(build)) => {
                p.version.build == build && p.version.revision == case.revision
            }
            // A Windows node whose kernelVersion names no usable build must be reported, not labelled.
            (Err(_), true, None) => true,
            (Ok(KernelVersion::Linux), false, _) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{:?} ({}): got {got:?}",
                case.kernel_version, case.source
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn real_kernel_versions_cover_the_builds() {
    let cases = kernel_cases();
    let windows = cases
        .iter()
        .filter(|c| c.windows && c.build.is_some())
        .count();
    assert!(windows >= 30, "only {windows} Windows kernel versions");
    for build in [14393, 16299, 17134, 17763, 18362, 19041, 20348, 26100] {
        assert!(
            cases.iter().any(|c| c.build == Some(build)),
            "no real kernel version of build {build}"
        );
    }
    assert!(cases.iter().all(|c| c.source.starts_with("https://")));
}

#[test]
fn real_windows_kernel_versions_give_valid_labels() {
    for case in kernel_cases() {
        if let Ok(KernelVersion::Windows(parsed)) = parse_kernel_version(&case.kernel_version) {
            for value in node_labels(&parsed, &LabelKeys::default()).labels.values() {
                assert!(
                    is_valid_label_value(value),
                    "{value:?} from {:?}",
                    case.kernel_version
                );
            }
        }
    }
}

#[test]
fn real_messages_are_classified() {
    let cases = message_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let got = classify(&case.message);
        let variant = got.variant.map(|v| v.as_str().to_owned());
        if got.os_mismatch != case.os_mismatch || variant != case.variant {
            failures.push(format!(
                "expected {:?}/{:?}, got {:?}/{variant:?}: {} ({})",
                case.os_mismatch,
                case.variant,
                got.os_mismatch,
                case.message.chars().take(160).collect::<String>(),
                case.source
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn real_messages_cover_mismatches_and_look_alikes() {
    let cases = message_cases();
    let mismatches = cases.iter().filter(|c| c.os_mismatch).count();
    let look_alikes = cases.len() - mismatches;
    assert!(
        mismatches >= 10 && look_alikes >= 10,
        "{mismatches} mismatches, {look_alikes} look-alikes"
    );
    for variant in [
        "hcs-0xc0370101",
        "hcsshim",
        "containerd",
        "pull-no-matching-manifest",
        "docker-version-check",
    ] {
        assert!(
            cases.iter().any(|c| c.variant.as_deref() == Some(variant)),
            "no real {variant} message"
        );
    }
}
