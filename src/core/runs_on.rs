//! Where an image runs, as osbuild label values (DOMAIN.md §2 and §3).
//!
//! For an index, a host pulls the one entry containerd's matcher picks for its build
//! ([`containerd_matches`], highest version first, index order on ties; an entry without `os.version`
//! matches every host and ranks lowest), and the image runs there when that entry starts on it
//! ([`super::compat::compat`]). So an index runs on the union over its entries, but not on a host that
//! would pick an entry it cannot start. A single manifest is not chosen at pull: it runs wherever its build
//! starts.
//!
//! The hosts considered are the builds the catalog knows plus the image's own builds; Windows Server 2016
//! hosts (whose label carries the revision) only at the revisions the image names.

use std::collections::BTreeSet;

use serde::Serialize;

use super::catalog::RELEASES;
use super::compat::{
    FIRST_BUILD_ONLY_MATCH, containerd_matches, revision_must_match, runs_hyperv_isolated,
    runs_process_isolated,
};
use super::labels::osbuild_value;
use super::platform::{ImageKind, ImagePlatforms, Platform};
use super::version::WindowsVersion;

/// How the pod's containers are isolated (its RuntimeClass decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Shares the host's kernel: the default, and what Kubernetes runs without a Hyper-V RuntimeClass.
    Process,
    /// Own kernel in a utility VM: any host whose build is the image's or newer.
    HyperV,
}

/// Whether a host runs the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Runs,
    DoesNotRun,
    /// The entry the host would use does not say its build.
    Unknown,
}

/// The osbuild label values of the hosts that run an image, and what limits the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RunsOn {
    /// osbuild label values (`BUILD`, or `BUILD.REVISION` before 1709), ascending by build.
    pub values: Vec<String>,
    /// The image has at least one Windows platform. When false, nothing is said about hosts.
    pub windows: bool,
    /// Some Windows platform's build (or the revision Windows Server 2016 needs) is unknown, so `values`
    /// leave out hosts that might run it: a placement should not narrow the pod to them alone.
    pub incomplete: bool,
    /// Index entries without `os.version`, which containerd pulls on any host no other entry matches.
    pub any_host_entries: usize,
    /// What a person should know about the answer, one sentence each.
    pub notes: Vec<String>,
}

/// The platform a Windows host pulls: containerd's pick for an index, the image itself for a manifest.
pub fn pulled_platform(image: &ImagePlatforms, host: WindowsVersion) -> Option<&Platform> {
    let windows = image.platforms.iter().filter(|p| p.is_windows());
    match image.kind {
        ImageKind::Manifest => windows.into_iter().next(),
        ImageKind::Index => {
            let mut best: Option<(&Platform, Option<WindowsVersion>)> = None;
            for platform in windows {
                let declared = if platform.matches_any_host {
                    None
                } else {
                    match platform.windows_version() {
                        Some(v) if containerd_matches(host.build, v.build) => Some(v),
                        _ => continue,
                    }
                };
                // Highest version wins; on a tie the earlier entry stays (containerd's stable sort).
                if best.is_none_or(|(_, v)| declared > v) {
                    best = Some((platform, declared));
                }
            }
            best.map(|(platform, _)| platform)
        }
    }
}

/// Whether a host of this version runs the image with this isolation.
pub fn host_verdict(image: &ImagePlatforms, host: WindowsVersion, isolation: Isolation) -> Verdict {
    match isolation {
        Isolation::Process => {
            let Some(platform) = pulled_platform(image, host) else {
                return Verdict::DoesNotRun;
            };
            match platform.windows_version() {
                Some(v) if runs_process_isolated(host, v) => Verdict::Runs,
                Some(_) => Verdict::DoesNotRun,
                None => Verdict::Unknown,
            }
        }
        // A Hyper-V host boots the image's own kernel: any Windows entry no newer than the host will do.
        Isolation::HyperV => {
            let mut verdict = Verdict::DoesNotRun;
            for platform in image.platforms.iter().filter(|p| p.is_windows()) {
                match platform.windows_version() {
                    Some(v) if runs_hyperv_isolated(host, v) => return Verdict::Runs,
                    Some(_) => {}
                    None => verdict = Verdict::Unknown,
                }
            }
            verdict
        }
    }
}

/// The osbuild values of every host that runs the image, e.g. an ltsc2022 index →
/// `20348, 22000, 22621, 22631, 25398, 26100`; a Windows Server 2016 image at 14393.1715 → `14393.1715`.
pub fn runs_on(image: &ImagePlatforms, isolation: Isolation) -> RunsOn {
    let mut answer = RunsOn {
        windows: image.has_windows(),
        ..RunsOn::default()
    };
    if !answer.windows {
        answer
            .notes
            .push("no Windows platform: the image does not run on Windows hosts".to_owned());
        return answer;
    }
    let windows: Vec<&Platform> = image.platforms.iter().filter(|p| p.is_windows()).collect();
    for platform in &windows {
        if platform.matches_any_host {
            answer.any_host_entries += 1;
            answer.notes.push(format!(
                "an index entry ({}) has no os.version: containerd pulls it on any host that no other entry matches{}",
                platform.digest.as_deref().unwrap_or("no digest"),
                match platform.windows_version() {
                    Some(v) => format!(", and it starts only where build {} does", v.build),
                    None => String::new(),
                }
            ));
        }
        match platform.windows_version() {
            None => {
                answer.incomplete = true;
                answer.notes.push(format!(
                    "a Windows {} image says no os.version in its index or config: its hosts are unknown",
                    platform.architecture
                ));
            }
            Some(v) if revision_must_match(v.build) && v.revision.is_none() => {
                answer.incomplete = true;
                answer.notes.push(format!(
                    "build {} needs the host's revision, and the image's os.version {} has none",
                    v.build,
                    platform.os_version.as_deref().unwrap_or_default()
                ));
            }
            Some(_) => {}
        }
    }
    let mut values: BTreeSet<(u32, Option<u32>)> = BTreeSet::new();
    for host in candidate_hosts(&windows) {
        if host_verdict(image, host, isolation) == Verdict::Runs {
            values.insert((host.build, host.revision));
        }
    }
    answer.values = values
        .into_iter()
        .filter_map(|(build, revision)| osbuild_value(WindowsVersion::new(build, revision)).ok())
        .collect();
    answer
}

/// Known builds from 1709 on, and the image's own builds (with their revisions before 1709).
fn candidate_hosts(windows: &[&Platform]) -> Vec<WindowsVersion> {
    let mut hosts: BTreeSet<WindowsVersion> = RELEASES
        .iter()
        .filter(|r| r.build >= FIRST_BUILD_ONLY_MATCH)
        .map(|r| WindowsVersion::new(r.build, None))
        .collect();
    for v in windows.iter().filter_map(|p| p.windows_version()) {
        if revision_must_match(v.build) {
            if v.revision.is_some() {
                hosts.insert(v);
            }
        } else {
            hosts.insert(WindowsVersion::new(v.build, None));
        }
    }
    hosts.into_iter().collect()
}

/// The osbuild values that run every Windows image of a pod (each image's `runs_on`); images that are
/// not Windows do not narrow it. `None` when no image is Windows.
pub fn common_values<'a>(images: impl IntoIterator<Item = &'a RunsOn>) -> Option<Vec<String>> {
    let mut common: Option<Vec<String>> = None;
    for image in images.into_iter().filter(|r| r.windows) {
        common = Some(match common {
            None => image.values.clone(),
            Some(so_far) => so_far
                .into_iter()
                .filter(|v| image.values.contains(v))
                .collect(),
        });
    }
    common
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::platform::VersionSource;

    fn entry(os_version: Option<&str>) -> Platform {
        Platform {
            os: "windows".into(),
            architecture: "amd64".into(),
            os_version: os_version.map(Into::into),
            version_source: if os_version.is_some() {
                VersionSource::Index
            } else {
                VersionSource::Unknown
            },
            matches_any_host: os_version.is_none(),
            digest: None,
        }
    }

    fn index(entries: Vec<Platform>) -> ImagePlatforms {
        ImagePlatforms {
            kind: ImageKind::Index,
            platforms: entries,
        }
    }

    fn manifest(os_version: &str) -> ImagePlatforms {
        ImagePlatforms {
            kind: ImageKind::Manifest,
            platforms: vec![Platform {
                version_source: VersionSource::Config,
                matches_any_host: false,
                ..entry(Some(os_version))
            }],
        }
    }

    fn values(image: &ImagePlatforms, isolation: Isolation) -> Vec<String> {
        runs_on(image, isolation).values
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(std::string::ToString::to_string).collect()
    }

    // Index entries shaped like the official Windows images' (docker-library/golang#393: an entry
    // "os.version": "10.0.20348.230"); sources of every shape in tests/registry/FIXTURES.md.
    #[test]
    fn ltsc_indexes() {
        let p = Isolation::Process;
        assert_eq!(
            values(&index(vec![entry(Some("10.0.17763.6293"))]), p),
            strs(&["17763"])
        );
        assert_eq!(
            values(&index(vec![entry(Some("10.0.20348.2655"))]), p),
            strs(&["20348", "22000", "22621", "22631", "25398", "26100"])
        );
        assert_eq!(
            values(&index(vec![entry(Some("10.0.26100.1742"))]), p),
            strs(&["26100", "26200"])
        );
    }

    #[test]
    fn multi_build_index_runs_on_the_union() {
        let image = index(vec![
            entry(Some("10.0.17763.6293")),
            entry(Some("10.0.20348.2655")),
        ]);
        assert_eq!(
            values(&image, Isolation::Process),
            strs(&[
                "17763", "20348", "22000", "22621", "22631", "25398", "26100"
            ])
        );
        // A WS2025 host picks the 26100 entry over the 20348 one; both run there.
        let image = index(vec![
            entry(Some("10.0.20348.2655")),
            entry(Some("10.0.26100.1742")),
        ]);
        let host = WindowsVersion::new(26100, Some(1));
        assert_eq!(
            pulled_platform(&image, host).and_then(|p| p.os_version.as_deref()),
            Some("10.0.26100.1742")
        );
        assert_eq!(
            values(&image, Isolation::Process),
            strs(&[
                "20348", "22000", "22621", "22631", "25398", "26100", "26200"
            ])
        );
    }

    #[test]
    fn a_single_manifest_is_not_matched_at_pull() {
        // No index: containerd does not choose, so a 25H2 host (26200) starts the WS2022 image.
        assert_eq!(
            values(&manifest("10.0.20348.2655"), Isolation::Process),
            strs(&[
                "20348", "22000", "22621", "22631", "25398", "26100", "26200"
            ])
        );
    }

    #[test]
    fn ws2016_needs_the_revision() {
        assert_eq!(
            values(&manifest("10.0.14393.1715"), Isolation::Process),
            strs(&["14393.1715"])
        );
        let answer = runs_on(&manifest("10.0.14393"), Isolation::Process);
        assert!(answer.values.is_empty() && answer.incomplete, "{answer:?}");
        // Hyper-V runs it on every later build too.
        let hyperv = values(&manifest("10.0.14393.1715"), Isolation::HyperV);
        assert_eq!(hyperv.first().map(String::as_str), Some("14393.1715"));
        assert!(hyperv.contains(&"17763".to_owned()) && hyperv.contains(&"26200".to_owned()));
    }

    #[test]
    fn hyperv_runs_images_no_newer_than_the_host() {
        let image = index(vec![entry(Some("10.0.20348.2655"))]);
        let hyperv = values(&image, Isolation::HyperV);
        assert_eq!(hyperv.first().map(String::as_str), Some("20348"));
        assert!(hyperv.contains(&"26200".to_owned()));
        assert!(!hyperv.contains(&"17763".to_owned()));
    }

    #[test]
    fn an_entry_without_os_version_matches_any_host() {
        // Its config says 17763: hosts no other entry matches pull it, and only 17763 starts it.
        let mut any = entry(None);
        any.os_version = Some("10.0.17763.6293".into());
        any.version_source = VersionSource::Config;
        let image = index(vec![entry(Some("10.0.20348.2655")), any]);
        let answer = runs_on(&image, Isolation::Process);
        assert_eq!(
            answer.values,
            strs(&[
                "17763", "20348", "22000", "22621", "22631", "25398", "26100"
            ])
        );
        assert_eq!(answer.any_host_entries, 1);
        assert!(answer.notes.iter().any(|n| n.contains("any host")));
        // A 26200 host pulls the any-host entry (the 20348 one does not match it), which cannot start.
        let host = WindowsVersion::new(26200, None);
        assert_eq!(
            host_verdict(&image, host, Isolation::Process),
            Verdict::DoesNotRun
        );
        // Listed first, it still loses to a matching entry with a version (dapr 1.16.9's outage was an
        // index whose only match was such an entry).
        let mut any_first = image.clone();
        any_first.platforms.reverse();
        let host = WindowsVersion::new(20348, None);
        assert_eq!(
            pulled_platform(&any_first, host).and_then(|p| p.os_version.as_deref()),
            Some("10.0.20348.2655")
        );
    }

    #[test]
    fn unknown_build_is_reported_not_guessed() {
        let image = index(vec![entry(None)]);
        let answer = runs_on(&image, Isolation::Process);
        assert!(answer.windows && answer.incomplete && answer.values.is_empty());
        assert_eq!(
            host_verdict(&image, WindowsVersion::new(20348, None), Isolation::Process),
            Verdict::Unknown
        );
    }

    #[test]
    fn linux_and_unknown_builds() {
        let mut linux = entry(None);
        linux.os = "linux".into();
        linux.matches_any_host = false;
        let answer = runs_on(&index(vec![linux]), Isolation::Process);
        assert!(!answer.windows && answer.values.is_empty());
        // An Insider build nobody catalogues still runs on its own build.
        assert_eq!(
            values(&manifest("10.0.17111.1"), Isolation::Process),
            strs(&["17111"])
        );
    }

    #[test]
    fn pods_with_several_images_run_where_all_do() {
        let ltsc2022 = runs_on(
            &index(vec![entry(Some("10.0.20348.2655"))]),
            Isolation::Process,
        );
        let ltsc2025 = runs_on(
            &index(vec![entry(Some("10.0.26100.1742"))]),
            Isolation::Process,
        );
        let mut linux = entry(None);
        linux.os = "linux".into();
        let linux = runs_on(&index(vec![linux]), Isolation::Process);
        assert_eq!(
            common_values([&ltsc2022, &ltsc2025, &linux]),
            Some(strs(&["26100"]))
        );
        assert_eq!(common_values([&linux]), None);
    }
}
