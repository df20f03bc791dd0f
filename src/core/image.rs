//! The Windows version an image reference names in its tag, when it names one.
//!
//! Windows base images are tagged by release (`ltsc2022`, `1809`, `20H2`), by release with a prefix or suffix
//! (`windowsservercore-ltsc2022`, `1809-KB4493509`, `ltsc2022-amd64`), or by full version
//! (`10.0.17763.437`). Application images built on them often keep the convention. Other tags (`latest`,
//! `v1.2.3`) say nothing, and we do not guess.

use super::catalog::release_by_name;
use super::version::{KernelVersion, WindowsVersion, parse_kernel_version};

/// The Windows version in an image reference's tag, if its tag names one.
pub fn windows_version_of_image(image: &str) -> Option<WindowsVersion> {
    let without_digest = image.split('@').next().unwrap_or_default();
    let last_segment = without_digest.rsplit('/').next().unwrap_or_default();
    let (_, tag) = last_segment.split_once(':')?;
    // A full version wins over a release name: it carries the revision that WS2016 hosts need.
    for token in tag.split(['-', '_']) {
        if token.starts_with("10.0.")
            && let Ok(KernelVersion::Windows(parsed)) = parse_kernel_version(token)
        {
            return Some(parsed.version);
        }
    }
    tag.split(['-', '_'])
        .find_map(release_by_name)
        .map(|release| WindowsVersion::new(release.build, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_that_name_a_version() {
        // Tags from Microsoft's docs (the seed: `nanoserver:1809`, `1809-KB4493509`, `10.0.17763.437`) and
        // MCR's published tags.
        let cases = [
            ("mcr.microsoft.com/windows/nanoserver:1809", 17763, None),
            (
                "mcr.microsoft.com/windows/nanoserver:1809-KB4493509",
                17763,
                None,
            ),
            (
                "mcr.microsoft.com/windows/nanoserver:10.0.17763.437",
                17763,
                Some(437),
            ),
            ("mcr.microsoft.com/windows/servercore:ltsc2019", 17763, None),
            (
                "mcr.microsoft.com/windows/servercore/iis:windowsservercore-ltsc2022",
                20348,
                None,
            ),
            (
                "mcr.microsoft.com/dotnet/framework/aspnet:4.8-windowsservercore-ltsc2025",
                26100,
                None,
            ),
            (
                "registry.example.com:5000/team/app:ltsc2022-amd64",
                20348,
                None,
            ),
            (
                "mcr.microsoft.com/windows/servercore:20H2@sha256:0123",
                19042,
                None,
            ),
            (
                "microsoft/windowsservercore:10.0.14393.1715",
                14393,
                Some(1715),
            ),
        ];
        for (image, build, revision) in cases {
            assert_eq!(
                windows_version_of_image(image),
                Some(WindowsVersion::new(build, revision)),
                "{image}"
            );
        }
    }

    #[test]
    fn tags_that_do_not() {
        for image in [
            "patricklang/fabrikamfiber.web:latest",
            "registry.example.com:5000/app",
            "app@sha256:0123",
            "nginx:1.27",
            "example/app:v2019",
            "",
        ] {
            assert_eq!(windows_version_of_image(image), None, "{image}");
        }
    }
}
