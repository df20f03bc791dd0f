//! What we tell the user about a mismatch: what failed, where, and how to fix it. Pure: no I/O.

use crate::core::catalog::release_for_build;
use crate::core::compat::compat;
use crate::core::image::windows_version_of_image;
use crate::core::labels::{LabelKeys, osbuild_value};
use crate::core::mismatch::Variant;
use crate::node_info::NodeFacts;

use super::detect::{Failure, SANDBOX};

/// The message of the `OSVersionMismatch` Event: container, image, node, the node's osbuild and release,
/// and the remediation. Kept under the Event note limit (1 kB) by the caller.
pub fn finding_message(
    failure: &Failure,
    node: &str,
    facts: &NodeFacts,
    keys: &LabelKeys,
) -> String {
    let what = if failure.container == SANDBOX {
        "The pod sandbox".to_owned()
    } else {
        format!("Container {:?}", failure.container)
    };
    let host = format!(
        "node {node} (osbuild {}, release {})",
        facts.osbuild.as_deref().unwrap_or("unknown"),
        facts.release.unwrap_or("unknown")
    );
    let fails = if failure.variant.is_pull_time() {
        "cannot be pulled for"
    } else {
        "cannot start on"
    };
    format!(
        "{what} (image {}) {fails} {host}: the image's Windows version does not match the host's ({} error). {}",
        failure.image,
        variant_name(failure.variant),
        remediation(&failure.image, facts, keys)
    )
}

fn variant_name(variant: Variant) -> &'static str {
    match variant {
        Variant::Hcs0xc0370101 => "HCS 0xc0370101",
        Variant::Hcsshim => "hcsshim",
        Variant::Containerd => "containerd",
        Variant::PullNoMatchingManifest => "pull: no matching manifest",
        Variant::DockerVersionCheck => "Docker version check",
        Variant::PullNoMatchForPlatform => "containerd pull: no match for platform",
    }
}

/// How to fix it: a nodeSelector on our labels for the image's build, or Hyper-V isolation.
pub fn remediation(image: &str, facts: &NodeFacts, keys: &LabelKeys) -> String {
    let Some(image_version) = windows_version_of_image(image) else {
        let runs: Vec<String> = facts
            .process_isolation_builds
            .iter()
            .map(u32::to_string)
            .collect();
        return format!(
            "Fix: select nodes that run the image's Windows build with nodeSelector {}: \"true\" (BUILD from the image's base, e.g. 20348 for ltsc2022; this node runs {}), or run it with Hyper-V isolation through a RuntimeClass (handler runhcs-wcow-hypervisor) on a host at least as new as the image.",
            keys.process_isolation("BUILD"),
            if runs.is_empty() {
                "unknown builds".to_owned()
            } else {
                format!("builds {}", runs.join(", "))
            }
        );
    };
    let release =
        release_for_build(image_version.build).map_or(String::new(), |r| format!(" ({})", r.id));
    let selector = match osbuild_value(image_version) {
        Ok(value) => format!("nodeSelector {}: \"true\"", keys.process_isolation(&value)),
        Err(_) => format!(
            "nodeSelector {}: \"{}.REVISION\" with the image's exact revision",
            keys.osbuild(),
            image_version.build
        ),
    };
    let hyperv = match facts.version {
        Some(host) if compat(host, image_version).hyperv_isolation => {
            "or run it on this node with Hyper-V isolation through a RuntimeClass (handler runhcs-wcow-hypervisor)"
        }
        Some(_) => "Hyper-V isolation cannot help on this node: the image is newer than the host",
        None => "or use Hyper-V isolation on a host at least as new as the image",
    };
    format!(
        "Fix: the image is built on Windows build {}{release}; schedule it with {selector}, {hyperv}.",
        image_version.build
    )
}

/// The annotation value with `--annotate-pods`: the same finding, compact.
pub fn annotation_value(failure: &Failure, node: &str, facts: &NodeFacts) -> serde_json::Value {
    serde_json::json!({
        "container": failure.container,
        "image": failure.image,
        "node": node,
        "osbuild": facts.osbuild,
        "release": facts.release,
        "variant": failure.variant,
        "imageBuild": windows_version_of_image(&failure.image).map(|v| v.build),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::version::WindowsVersion;

    fn ws2019_node() -> NodeFacts {
        NodeFacts {
            windows: true,
            version: Some(WindowsVersion::new(17763, Some(3887))),
            osbuild: Some("17763".into()),
            release: Some("ltsc2019"),
            process_isolation_builds: vec![17763],
        }
    }

    fn failure(image: &str) -> Failure {
        Failure {
            container: "app".into(),
            image: image.into(),
            variant: Variant::Containerd,
            visible_since: None,
        }
    }

    #[test]
    fn newer_image_on_older_host() {
        let keys = LabelKeys::default();
        let m = finding_message(
            &failure("example/app:ltsc2022"),
            "win-1",
            &ws2019_node(),
            &keys,
        );
        assert!(
            m.contains("Container \"app\" (image example/app:ltsc2022)"),
            "{m}"
        );
        assert!(
            m.contains("node win-1 (osbuild 17763, release ltsc2019)"),
            "{m}"
        );
        assert!(
            m.contains("osbuild-controller.io/process-isolation-20348: \"true\""),
            "{m}"
        );
        assert!(m.contains("Hyper-V isolation cannot help"), "{m}");
        assert!(m.len() < 1024);
    }

    #[test]
    fn older_image_on_newer_host_offers_hyperv() {
        let mut facts = ws2019_node();
        facts.version = Some(WindowsVersion::new(20348, None));
        let r = remediation(
            "mcr.microsoft.com/windows/servercore:ltsc2019",
            &facts,
            &LabelKeys::default(),
        );
        assert!(
            r.contains("process-isolation-17763") && r.contains("runhcs-wcow-hypervisor"),
            "{r}"
        );
    }

    #[test]
    fn ws2016_image_needs_the_revision() {
        let r = remediation(
            "microsoft/windowsservercore:ltsc2016",
            &ws2019_node(),
            &LabelKeys::default(),
        );
        assert!(
            r.contains("beta.kubernetes.io/osbuild: \"14393.REVISION\""),
            "{r}"
        );
        let r = remediation(
            "microsoft/windowsservercore:10.0.14393.1715",
            &ws2019_node(),
            &LabelKeys::default(),
        );
        assert!(r.contains("process-isolation-14393.1715"), "{r}");
    }

    #[test]
    fn unknown_image_version_still_gets_advice() {
        let r = remediation(
            "patricklang/fabrikamfiber.web:latest",
            &ws2019_node(),
            &LabelKeys::default(),
        );
        assert!(
            r.contains("process-isolation-BUILD") && r.contains("this node runs builds 17763"),
            "{r}"
        );
    }

    #[test]
    fn annotation_names_variant_and_image_build() {
        let v = annotation_value(&failure("a:ltsc2022"), "n", &ws2019_node());
        assert_eq!(v["variant"], "containerd");
        assert_eq!(v["imageBuild"], 20348);
    }
}
