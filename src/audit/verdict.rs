//! The audit's verdict for one workload: given the nodes its pod template can land on and the platforms of
//! its images (read from their registries), will it run there? Pure: no I/O.
//!
//! - `ok`: every node it can land on runs every image;
//! - `at-risk`: some can, some cannot: the crash loop that has not happened yet, on the nodes named;
//! - `broken`: none can (or no node admits the template at all);
//! - `unknown`: an image could not be read, or a node's or image's build is unknown, so nothing is claimed.

use serde::Serialize;

use crate::core::catalog::release_for_build;
use crate::core::platform::ImagePlatforms;
use crate::core::runs_on::{Isolation, Verdict as HostVerdict, host_verdict};
use crate::core::version::WindowsVersion;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    // Declared worst first: sorting by verdict puts the workloads that need attention on top.
    Broken,
    AtRisk,
    Unknown,
    Ok,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Broken => "broken",
            Verdict::AtRisk => "at-risk",
            Verdict::Unknown => "unknown",
            Verdict::Ok => "ok",
        }
    }
}

/// A node the template can land on, with its Windows version when its kernelVersion parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub version: Option<WindowsVersion>,
}

/// One image of the workload, as its registry answered.
#[derive(Debug, Clone)]
pub enum ImageRead<'a> {
    Platforms(&'a ImagePlatforms),
    /// Why it could not be read (401, 404, timeout, bad manifest, ...).
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The nodes it can land on that cannot run some image, sorted.
    pub nodes_that_fail: Vec<String>,
    /// For people: what fails where, and what image build would run there.
    pub detail: String,
}

pub fn judge(
    candidates: &[Candidate],
    images: &[(&str, ImageRead<'_>)],
    isolation: Isolation,
) -> Judgement {
    let unreadable: Vec<String> = images
        .iter()
        .filter_map(|(image, read)| match read {
            ImageRead::Unreadable(why) => Some(format!("{image}: {why}")),
            ImageRead::Platforms(_) => None,
        })
        .collect();
    if !unreadable.is_empty() {
        return Judgement {
            verdict: Verdict::Unknown,
            nodes_that_fail: Vec::new(),
            detail: format!("cannot read {}", unreadable.join("; ")),
        };
    }
    if candidates.is_empty() {
        return Judgement {
            verdict: Verdict::Broken,
            nodes_that_fail: Vec::new(),
            detail:
                "no node admits the pod template (nodeSelector, affinity, taints or RuntimeClass)"
                    .to_owned(),
        };
    }
    let mut failing = Vec::new();
    let mut reasons = Vec::new();
    let mut unknown = Vec::new();
    for node in candidates {
        let Some(host) = node.version else {
            unknown.push(format!("{}: Windows build unknown", node.name));
            continue;
        };
        let mut fails_here = Vec::new();
        for (image, read) in images {
            let ImageRead::Platforms(platforms) = read else {
                continue;
            };
            if !platforms.has_windows() {
                fails_here.push(format!("{image} has no Windows platform"));
                continue;
            }
            match host_verdict(platforms, host, isolation) {
                HostVerdict::Runs => {}
                HostVerdict::DoesNotRun => fails_here.push(format!(
                    "{image} ({}) does not run on build {}; {}",
                    built_for(platforms),
                    host.build,
                    would_run(host)
                )),
                HostVerdict::Unknown => {
                    unknown.push(format!(
                        "{}: {image} does not say its Windows build",
                        node.name
                    ));
                }
            }
        }
        if !fails_here.is_empty() {
            failing.push(node.name.clone());
            reasons.push(format!("{}: {}", node.name, fails_here.join("; ")));
        }
    }
    failing.sort();
    let verdict = if failing.len() == candidates.len() {
        Verdict::Broken
    } else if !failing.is_empty() {
        Verdict::AtRisk
    } else if !unknown.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Ok
    };
    let detail = match verdict {
        Verdict::Ok => format!("runs on all {} node(s) it can land on", candidates.len()),
        Verdict::Unknown => unknown.join("; "),
        Verdict::AtRisk | Verdict::Broken => reasons.join(" | "),
    };
    Judgement {
        verdict,
        nodes_that_fail: failing,
        detail,
    }
}

/// The Windows builds an image's platforms name, e.g. "built for 17763, 20348".
fn built_for(platforms: &ImagePlatforms) -> String {
    let mut builds: Vec<u32> = platforms
        .platforms
        .iter()
        .filter(|p| p.is_windows())
        .filter_map(|p| p.windows_version().map(|v| v.build))
        .collect();
    builds.sort_unstable();
    builds.dedup();
    if builds.is_empty() {
        "build unknown".to_owned()
    } else {
        let list: Vec<String> = builds.iter().map(u32::to_string).collect();
        format!("built for {}", list.join(", "))
    }
}

/// The image build that would run on this host: its own (always compatible in process isolation).
fn would_run(host: WindowsVersion) -> String {
    let release = release_for_build(host.build).map_or(String::new(), |r| format!(" ({})", r.id));
    format!(
        "an image with a {}{release} entry would run there",
        host.build
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::platform::{ImageKind, Platform, VersionSource};

    fn windows(os_version: &str) -> Platform {
        Platform {
            os: "windows".into(),
            architecture: "amd64".into(),
            os_version: Some(os_version.into()),
            version_source: VersionSource::Index,
            matches_any_host: false,
            digest: None,
        }
    }

    fn index(versions: &[&str]) -> ImagePlatforms {
        ImagePlatforms {
            kind: ImageKind::Index,
            platforms: versions.iter().map(|v| windows(v)).collect(),
        }
    }

    fn node(name: &str, build: u32, revision: u32) -> Candidate {
        Candidate {
            name: name.into(),
            version: Some(WindowsVersion::new(build, Some(revision))),
        }
    }

    // Image shapes as mcr.microsoft.com/windows/servercore publishes them (tests/registry/FIXTURES.md).
    const LTSC2019: &str = "10.0.17763.6293";
    const LTSC2022: &str = "10.0.20348.2655";

    #[test]
    fn ok_at_risk_and_broken() {
        let ltsc2022 = index(&[LTSC2022]);
        let images = [("app:ltsc2022", ImageRead::Platforms(&ltsc2022))];
        let ws2022 = node("ws2022", 20348, 2655);
        let ws2025 = node("ws2025", 26100, 1742);
        let ws2019 = node("ws2019", 17763, 3887);

        let ok = judge(
            &[ws2022.clone(), ws2025.clone()],
            &images,
            Isolation::Process,
        );
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
        assert!(ok.nodes_that_fail.is_empty());

        let risk = judge(
            &[ws2022.clone(), ws2019.clone()],
            &images,
            Isolation::Process,
        );
        assert_eq!(risk.verdict, Verdict::AtRisk);
        assert_eq!(risk.nodes_that_fail, ["ws2019"]);
        assert!(
            risk.detail.contains("built for 20348") && risk.detail.contains("17763 (ltsc2019)"),
            "{}",
            risk.detail
        );

        let broken = judge(std::slice::from_ref(&ws2019), &images, Isolation::Process);
        assert_eq!(broken.verdict, Verdict::Broken);
        // Hyper-V isolation runs an older image on a newer host, not a newer one on an older host.
        assert_eq!(
            judge(&[ws2019], &images, Isolation::HyperV).verdict,
            Verdict::Broken
        );
        let ltsc2019 = index(&[LTSC2019]);
        let old = [("app:ltsc2019", ImageRead::Platforms(&ltsc2019))];
        assert_eq!(
            judge(std::slice::from_ref(&ws2025), &old, Isolation::Process).verdict,
            Verdict::Broken
        );
        assert_eq!(
            judge(&[ws2025], &old, Isolation::HyperV).verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn a_multi_build_index_runs_on_both_and_every_image_counts() {
        let multi = index(&[LTSC2019, LTSC2022]);
        let ltsc2022 = index(&[LTSC2022]);
        let nodes = [node("ws2019", 17763, 3887), node("ws2022", 20348, 2655)];
        let one = [("app", ImageRead::Platforms(&multi))];
        assert_eq!(judge(&nodes, &one, Isolation::Process).verdict, Verdict::Ok);
        // A sidecar built for 2022 only puts the 2019 nodes at risk.
        let two = [
            ("app", ImageRead::Platforms(&multi)),
            ("sidecar", ImageRead::Platforms(&ltsc2022)),
        ];
        let j = judge(&nodes, &two, Isolation::Process);
        assert_eq!(
            (j.verdict, j.nodes_that_fail.as_slice()),
            (Verdict::AtRisk, &["ws2019".to_owned()][..])
        );
        assert!(j.detail.contains("sidecar"), "{}", j.detail);
    }

    #[test]
    fn unknowns_claim_nothing() {
        let ltsc2022 = index(&[LTSC2022]);
        let nodes = [node("ws2022", 20348, 2655)];
        let unreadable = [(
            "private/app:1",
            ImageRead::Unreadable("401 unauthorized".into()),
        )];
        let j = judge(&nodes, &unreadable, Isolation::Process);
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(j.detail.contains("401"), "{}", j.detail);
        let unparsed = [Candidate {
            name: "odd".into(),
            version: None,
        }];
        let images = [("app", ImageRead::Platforms(&ltsc2022))];
        assert_eq!(
            judge(&unparsed, &images, Isolation::Process).verdict,
            Verdict::Unknown
        );
        // Positive control for the same image: known nodes get a real answer.
        assert_eq!(
            judge(&nodes, &images, Isolation::Process).verdict,
            Verdict::Ok
        );
        assert_eq!(
            judge(&[], &images, Isolation::Process).verdict,
            Verdict::Broken
        );
    }

    #[test]
    fn verdicts_sort_worst_first() {
        let mut v = vec![
            Verdict::Ok,
            Verdict::Unknown,
            Verdict::Broken,
            Verdict::AtRisk,
        ];
        v.sort();
        assert_eq!(
            v,
            [
                Verdict::Broken,
                Verdict::AtRisk,
                Verdict::Unknown,
                Verdict::Ok
            ]
        );
        assert_eq!(serde_json::to_value(Verdict::AtRisk).unwrap(), "at-risk");
    }
}
