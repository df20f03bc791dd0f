//! Properties that hold for every input, not just the real-world tables: parsing and classifying never
//! panic, and every label value we would write is valid Kubernetes label-value syntax.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::pedantic)] // test code: a panic is a failed test

use osbuild_controller::core::labels::{
    LabelKeys, is_valid_label_value, node_labels, validate_label_key,
};
use osbuild_controller::core::mismatch::classify;
use osbuild_controller::core::version::{
    KernelVersion, parse_build_revision, parse_kernel_version,
};
use proptest::prelude::*;

/// Strings shaped like kernel versions (so the parser's deeper branches are reached), plus noise.
fn kernel_version_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "10\\.0\\.[0-9]{0,7}(\\.[0-9]{0,7})?",
        "10\\.0 [0-9]{4,6} \\([0-9]{4,6}\\.[0-9]{1,6}\\.[a-z0-9]{0,8}\\.[a-z_]{0,12}\\.[0-9-]{0,12}\\)",
        "[0-9]{5}\\.[0-9]{1,5}\\.(amd64|arm64|x86)(fre|chk)\\.[a-z0-9_]{1,20}\\.[0-9]{6}-[0-9]{4}",
        "[0-9]{1,2}\\.[0-9]{1,3}(\\.[0-9]{1,4})?(-[a-z0-9.+-]{0,20})?",
        "[ 0-9.()a-z_-]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn parse_never_panics_and_labels_are_valid(input in kernel_version_like()) {
        if let Ok(KernelVersion::Windows(parsed)) = parse_kernel_version(&input) {
            let labels = node_labels(&parsed, &LabelKeys::default());
            for (key, value) in &labels.labels {
                prop_assert!(validate_label_key(key).is_ok(), "key {key:?} from {input:?}");
                prop_assert!(is_valid_label_value(value), "value {value:?} from {input:?}");
            }
        }
    }

    #[test]
    fn dotted_versions_round_trip(build in 10_000u32..100_000, revision in proptest::option::of(0u32..100_000)) {
        let text = match revision {
            Some(r) => format!("10.0.{build}.{r}"),
            None => format!("10.0.{build}"),
        };
        match parse_kernel_version(&text) {
            Ok(KernelVersion::Windows(parsed)) => {
                prop_assert_eq!(parsed.version.build, build);
                prop_assert_eq!(parsed.version.revision, revision);
            }
            other => prop_assert!(false, "{text:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn bare_versions_never_panic(input in "[0-9.]{0,25}") {
        let _ = parse_build_revision(&input);
    }

    #[test]
    fn classify_never_panics(message in any::<String>()) {
        let answer = classify(&message);
        prop_assert_eq!(answer.os_mismatch, answer.variant.is_some());
    }

    /// Wrapping a mismatch message anywhere (newline, JSON escape, CRLF) never hides it.
    #[test]
    fn classify_survives_wrapping_anywhere(at in 0usize..200, wrap in prop_oneof![Just("\n"), Just("\\n"), Just("\r\n  "), Just("\\\\n")]) {
        let message = "hcs::CreateComputeSystem 1f2e: The container operating system does not match the host operating system.: unknown";
        let at = at.min(message.len());
        let wrapped = format!("{}{}{}", &message[..at], wrap, &message[at..]);
        prop_assert!(classify(&wrapped).os_mismatch, "{wrapped:?}");
    }
}
