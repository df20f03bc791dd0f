//! containerd's pull error `no match for platform in manifest: not found` names no OS and no version: a
//! Windows image index without an entry for the host's build says it, and so does a Linux-only image on a
//! Windows node (another failure). The detector flags it as the mismatch
//! ([`Variant::PullNoMatchForPlatform`](crate::core::mismatch::Variant)) only once the image's platforms,
//! read from its registry, show Windows entries none of which the node runs. Pure: the driver
//! (`pods/mod.rs`) reads the image and hands the answer in.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::detect::{container_statuses, spec_image};
use crate::core::mismatch::{classify, is_ambiguous_platform_error};
use crate::core::platform::ImagePlatforms;
use crate::core::runs_on::{Isolation, Verdict, host_verdict};
use crate::core::version::WindowsVersion;

/// A container whose pull fails with the ambiguous message, and the image to read to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmbiguousPull {
    pub container: String,
    pub image: String,
}

/// Whether the container waits with the ambiguous pull error now (and no wording `classify` recognises).
pub fn pull_is_ambiguous(cs: &ContainerStatus) -> bool {
    cs.state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.as_deref())
        .is_some_and(|m| is_ambiguous_platform_error(m) && !classify(m).os_mismatch)
}

/// The containers (and init containers) of the pod whose pull fails with the ambiguous message.
pub fn ambiguous_pulls(pod: &Pod) -> Vec<AmbiguousPull> {
    container_statuses(pod)
        .filter(|cs| pull_is_ambiguous(cs))
        .map(|cs| AmbiguousPull {
            container: cs.name.clone(),
            image: spec_image(pod, &cs.name).unwrap_or_else(|| cs.image.clone()),
        })
        .collect()
}

/// The decision: the mismatch when the image has Windows entries and the host (whose version is known)
/// runs none of them with process isolation. A Linux-only image, an entry whose build is unknown, or a
/// host of unknown version is not flagged: nothing then shows that the Windows build is the cause.
pub fn is_platform_mismatch(image: &ImagePlatforms, host: Option<WindowsVersion>) -> bool {
    let Some(host) = host else {
        return false;
    };
    image.has_windows() && host_verdict(image, host, Isolation::Process) == Verdict::DoesNotRun
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::platform::{ImageKind, Platform, VersionSource};
    use serde_json::json;

    /// containerd's CRI pull failure as reported in https://github.com/containerd/containerd/issues/6989
    /// (also in tests/data/error_messages.json).
    const CONTAINERD_PULL: &str = "rpc error: code = NotFound desc = failed to pull and unpack image \"mcr.microsoft.com/windows/servercore:ltsc2019\": no match for platform in manifest: not found";

    fn entry(os: &str, os_version: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: "amd64".into(),
            os_version: os_version.map(Into::into),
            version_source: if os_version.is_some() {
                VersionSource::Index
            } else {
                VersionSource::Unknown
            },
            matches_any_host: false,
            digest: None,
        }
    }

    fn index(entries: Vec<Platform>) -> ImagePlatforms {
        ImagePlatforms {
            kind: ImageKind::Index,
            platforms: entries,
        }
    }

    #[allow(clippy::unnecessary_wraps)] // the decision takes the node's version as it comes: optional
    fn host(build: u32) -> Option<WindowsVersion> {
        Some(WindowsVersion {
            build,
            revision: None,
        })
    }

    #[test]
    fn windows_entries_the_host_cannot_run_are_the_mismatch() {
        // An ltsc2019 index on a Windows Server 2022 host: no entry for 20348.
        let ltsc2019 = index(vec![entry("windows", Some("10.0.17763.5830"))]);
        assert!(is_platform_mismatch(&ltsc2019, host(20348)));
        // ltsc2019 and ltsc2022 entries on a 2019 host: the 17763 one runs, so something else failed.
        let both = index(vec![
            entry("windows", Some("10.0.17763.5830")),
            entry("windows", Some("10.0.20348.2461")),
        ]);
        assert!(!is_platform_mismatch(&both, host(17763)));
        assert!(
            !is_platform_mismatch(&ltsc2019, host(17763)),
            "positive control"
        );
    }

    #[test]
    fn a_linux_only_image_on_a_windows_node_is_not_the_mismatch() {
        let linux = index(vec![entry("linux", None), entry("linux", None)]);
        assert!(!is_platform_mismatch(&linux, host(17763)));
    }

    #[test]
    fn unknown_host_or_unknown_entry_build_is_not_flagged() {
        let ltsc2019 = index(vec![entry("windows", Some("10.0.17763.5830"))]);
        assert!(!is_platform_mismatch(&ltsc2019, None));
        let mut unversioned = entry("windows", None);
        unversioned.matches_any_host = true;
        assert!(!is_platform_mismatch(
            &index(vec![unversioned]),
            host(20348)
        ));
    }

    #[test]
    fn finds_the_containers_waiting_with_the_ambiguous_pull_error() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [
                {"name": "app", "image": "example/app:ltsc2019"},
                {"name": "sidecar", "image": "example/sidecar:1"}
            ]},
            "status": {"containerStatuses": [
                {"name": "app", "image": "example/app:ltsc2019", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ErrImagePull", "message": CONTAINERD_PULL}}},
                {"name": "sidecar", "image": "example/sidecar:1", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ErrImagePull", "message": "rpc error: code = NotFound desc = failed to pull and unpack image \"example/sidecar:1\": not found"}}}
            ]}
        }))
        .unwrap();
        assert_eq!(
            ambiguous_pulls(&pod),
            [AmbiguousPull {
                container: "app".into(),
                image: "example/app:ltsc2019".into()
            }]
        );
        // Confirmed, it is a failure of its own variant; unconfirmed, nothing.
        let confirmed = super::super::detect::active_failures_confirmed(&pod, &["app".into()]);
        assert_eq!(confirmed.len(), 1);
        assert_eq!(
            confirmed[0].variant,
            crate::core::mismatch::Variant::PullNoMatchForPlatform
        );
        assert!(super::super::detect::active_failures(&pod).is_empty());
    }
}
