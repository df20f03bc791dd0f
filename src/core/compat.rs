//! Which image builds a host runs, and how (DOMAIN.md §3).
//!
//! Process isolation shares the host's kernel, so the image must be one the host's kernel accepts; Hyper-V
//! isolation boots the image's own kernel in a utility VM, which works for any image no newer than the host.

use super::catalog::release_for_build;
use super::version::WindowsVersion;

/// Windows Server, version 1709: the first build where only the build, not the revision, must match.
pub const FIRST_BUILD_ONLY_MATCH: u32 = 16299;
const WS2022: u32 = 20348;
const WS2025: u32 = 26100;
const WIN11_FIRST: u32 = 22000;

/// Whether an image must match the host's revision as well as its build (Windows Server 2016 and older).
pub fn revision_must_match(build: u32) -> bool {
    build < FIRST_BUILD_ONLY_MATCH
}

/// The image builds a host runs with process isolation, ascending. Always includes the host's own build;
/// from Windows Server 2022 on some hosts also run older LTSC images. For a host whose revision must match,
/// the image's revision must also equal the host's (see [`compat`]).
pub fn process_isolation_builds(host_build: u32) -> Vec<u32> {
    let mut builds = older_ltsc_builds(host_build).to_vec();
    builds.push(host_build);
    builds.sort_unstable();
    builds.dedup();
    builds
}

/// The older LTSC image builds a host also runs process-isolated, beside its own.
fn older_ltsc_builds(host_build: u32) -> &'static [u32] {
    match host_build {
        // Windows Server, version 23H2 "only supports the Windows Server 2022 LTSC container image"; Windows
        // 11 runs WS2022 images (Microsoft calls it preview).
        b if (WIN11_FIRST..WS2025).contains(&b) && release_for_build(b).is_some() => &[WS2022],
        // Windows Server 2025 (and Windows 11 24H2) runs WS2022 and WS2025 images; later Windows 11
        // releases keep both.
        WS2025 => &[WS2022],
        b if b > WS2025 && release_for_build(b).is_some() => &[WS2022, WS2025],
        // Before WS2022, and for builds we do not know (Insider, future): the identical build only.
        _ => &[],
    }
}

/// Whether `host` runs an image of `image` process-isolated: [`compat`]'s answer without its reason, and
/// without allocating (placement asks it for every node of the cluster and every image of a pod).
pub fn runs_process_isolated(host: WindowsVersion, image: WindowsVersion) -> bool {
    let build_accepted =
        image.build == host.build || older_ltsc_builds(host.build).contains(&image.build);
    build_accepted
        && (!revision_must_match(host.build)
            || matches!((host.revision, image.revision), (Some(h), Some(i)) if h == i))
}

/// Whether `host` runs an image of `image` with Hyper-V isolation: any image no newer than the host.
pub fn runs_hyperv_isolated(host: WindowsVersion, image: WindowsVersion) -> bool {
    image.build <= host.build
}

/// Whether containerd's Windows platform matcher accepts an image index entry of build `entry_build` on a
/// host of build `host_build` (DOMAIN.md §3, containerd `platforms`): only the build counts, never the
/// revision; a host before Windows Server 2022 needs its exact build; a later host accepts builds from the
/// newest LTSC strictly below it (20348 for hosts up to and including 26100, 26100 after that) up to its own.
/// It decides which entry a host *pulls*; whether that entry then *starts* is [`compat`]'s question.
pub fn containerd_matches(host_build: u32, entry_build: u32) -> bool {
    if host_build < WS2022 {
        return host_build == entry_build;
    }
    let oldest_accepted = LTSC_FROM_WS2022
        .iter()
        .rev()
        .find(|&&ltsc| host_build > ltsc)
        .copied()
        .unwrap_or(WS2022);
    (oldest_accepted..=host_build).contains(&entry_build)
}

/// The LTSC releases whose images later hosts keep running ("stable ABI"), ascending.
const LTSC_FROM_WS2022: &[u32] = &[WS2022, WS2025];

/// The answer to "can this host run this image?".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Compatibility {
    pub process_isolation: bool,
    pub hyperv_isolation: bool,
    /// One line that says why, for people.
    pub reason: String,
}

/// Whether `host` runs `image` with process isolation and with Hyper-V isolation.
pub fn compat(host: WindowsVersion, image: WindowsVersion) -> Compatibility {
    let hyperv_isolation = runs_hyperv_isolated(host, image);
    let (process_isolation, process_reason) = process_isolation(host, image);
    let hyperv_reason = if hyperv_isolation {
        "Hyper-V isolation runs it"
    } else {
        "Hyper-V isolation never runs an image newer than the host"
    };
    Compatibility {
        process_isolation,
        hyperv_isolation,
        reason: format!("{process_reason}; {hyperv_reason}"),
    }
}

fn process_isolation(host: WindowsVersion, image: WindowsVersion) -> (bool, String) {
    let host_name = describe(host.build);
    if !process_isolation_builds(host.build).contains(&image.build) {
        let relation = if image.build > host.build {
            "newer than"
        } else {
            "older than"
        };
        return (
            false,
            format!(
                "image build {} is {relation} host build {} ({host_name}), and process isolation needs {}",
                image.build,
                host.build,
                accepted_builds(host.build)
            ),
        );
    }
    if !revision_must_match(host.build) {
        let why = if image.build == host.build {
            format!(
                "same build {} ({host_name}); revisions need not match from 1709 on",
                host.build
            )
        } else {
            format!(
                "{host_name} hosts run build {} ({}) images process-isolated",
                image.build,
                describe(image.build)
            )
        };
        return (true, why);
    }
    match (host.revision, image.revision) {
        (Some(h), Some(i)) if h == i => (
            true,
            format!("same build and revision {}.{h} ({host_name})", host.build),
        ),
        (Some(h), Some(i)) => (
            false,
            format!(
                "{host_name} needs the image revision to equal the host's: image {}.{i}, host {}.{h}",
                image.build, host.build
            ),
        ),
        (host_rev, _) => (
            false,
            format!(
                "{host_name} needs the image revision to equal the host's, and the {} revision is unknown",
                if host_rev.is_none() { "host" } else { "image" }
            ),
        ),
    }
}

fn accepted_builds(host_build: u32) -> String {
    let builds: Vec<String> = process_isolation_builds(host_build)
        .iter()
        .map(u32::to_string)
        .collect();
    match builds.as_slice() {
        [one] => format!("build {one}"),
        many => format!("one of builds {}", many.join(", ")),
    }
}

fn describe(build: u32) -> &'static str {
    release_for_build(build).map_or("unknown release", |r| r.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(build: u32, revision: Option<u32>) -> WindowsVersion {
        WindowsVersion::new(build, revision)
    }

    #[test]
    fn the_allocation_free_checks_agree_with_compat() {
        // Every known release and its neighbours, as hosts and as images, with and without revisions.
        let mut builds: Vec<u32> = crate::core::catalog::RELEASES
            .iter()
            .flat_map(|r| [r.build - 1, r.build, r.build + 1])
            .collect();
        builds.extend([9200, 30000]);
        let revisions = [None, Some(1), Some(2)];
        let mut runs = 0;
        for &host in &builds {
            for &image in &builds {
                for hr in revisions {
                    for ir in revisions {
                        let (h, i) = (v(host, hr), v(image, ir));
                        let full = compat(h, i);
                        assert_eq!(
                            runs_process_isolated(h, i),
                            full.process_isolation,
                            "{h:?} {i:?}"
                        );
                        assert_eq!(
                            runs_hyperv_isolated(h, i),
                            full.hyperv_isolation,
                            "{h:?} {i:?}"
                        );
                        runs += usize::from(full.process_isolation);
                    }
                }
            }
        }
        // Positive control: the grid holds runs (same builds, older LTSC images) as well as refusals.
        assert!(runs > builds.len(), "{runs}");
    }

    #[test]
    fn process_isolation_sets_follow_domain_rules() {
        let cases: &[(u32, &[u32])] = &[
            (14393, &[14393]),
            (16299, &[16299]),
            (17763, &[17763]),
            (19045, &[19045]),
            (20348, &[20348]),
            (22000, &[20348, 22000]),
            (22631, &[20348, 22631]),
            (25398, &[20348, 25398]),
            (26100, &[20348, 26100]),
            (26200, &[20348, 26100, 26200]),
            (17111, &[17111]),
            (23000, &[23000]),
            (28000, &[28000]),
        ];
        for (host, expected) in cases {
            assert_eq!(process_isolation_builds(*host), *expected, "host {host}");
        }
    }

    #[test]
    fn containerd_matcher_follows_its_ltsc_window() {
        // (host, entry, pulled?) - containerd/platforms platform_windows_compat.go and its tests.
        let cases = [
            (17763, 17763, true),
            (17763, 20348, false),
            (17763, 14393, false),
            (14393, 14393, true),
            (19045, 17763, false),
            (20348, 20348, true),
            (20348, 17763, false),
            (22000, 20348, true),
            (22631, 22631, true),
            (22631, 26100, false),
            (25398, 20348, true),
            (26100, 20348, true),
            (26100, 25398, true),
            (26100, 26100, true),
            (26200, 26100, true),
            (26200, 20348, false),
            (26200, 26200, true),
            (28000, 26100, true),
        ];
        for (host, entry, pulled) in cases {
            assert_eq!(
                containerd_matches(host, entry),
                pulled,
                "host {host} entry {entry}"
            );
        }
    }

    #[test]
    fn compat_matrix() {
        // (host, image, process, hyperv)
        let cases = [
            // The seed's example: WS2016 revisions 1914 vs 1944 might not start.
            (v(14393, Some(1914)), v(14393, Some(1944)), false, true),
            (v(14393, Some(1715)), v(14393, Some(1715)), true, true),
            (v(14393, None), v(14393, Some(1715)), false, true),
            (v(14393, Some(1715)), v(16299, None), false, false),
            (v(16299, Some(125)), v(16299, Some(15)), true, true),
            (v(17763, Some(4534)), v(17763, Some(437)), true, true),
            (v(17763, None), v(14393, Some(1715)), false, true),
            (v(17763, None), v(20348, None), false, false),
            (v(20348, None), v(17763, None), false, true),
            (v(25398, None), v(20348, None), true, true),
            (v(26100, Some(32995)), v(20348, Some(1)), true, true),
            (v(26100, None), v(17763, None), false, true),
            (v(22631, None), v(20348, None), true, true),
            (v(19045, None), v(20348, None), false, false),
        ];
        for (host, image, process, hyperv) in cases {
            let answer = compat(host, image);
            assert_eq!(
                (answer.process_isolation, answer.hyperv_isolation),
                (process, hyperv),
                "host {host} image {image}: {}",
                answer.reason
            );
        }
    }

    #[test]
    fn reasons_name_the_deciding_fact() {
        let r = compat(v(14393, Some(1914)), v(14393, Some(1944))).reason;
        assert!(r.contains("14393.1944") && r.contains("14393.1914"), "{r}");
        let r = compat(v(17763, None), v(20348, None)).reason;
        assert!(
            r.contains("newer than host build 17763") && r.contains("never runs"),
            "{r}"
        );
        let r = compat(v(26100, None), v(20348, None)).reason;
        assert!(
            r.contains("Windows Server 2025") && r.contains("20348"),
            "{r}"
        );
        let r = compat(v(14393, None), v(14393, Some(1))).reason;
        assert!(r.contains("host revision is unknown"), "{r}");
    }
}
