//! The Windows builds we know by name (DOMAIN.md §1 "Builds"). A build missing here is still a valid
//! build: it is labelled by its number and its release is unknown.

/// How Microsoft ships a release; it decides how long the release lives and whether base images exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Long-Term Servicing Channel: Windows Server 2016, 2019, 2022, 2025.
    Ltsc,
    /// Semi-Annual Channel: Windows Server, version 1709 to 20H2.
    Sac,
    /// Annual Channel: Windows Server, version 23H2.
    Annual,
    /// Windows 10 and 11 desktop releases.
    Client,
}

/// A named Windows release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Release {
    pub build: u32,
    /// Short, label-safe identifier (e.g. `ltsc2019`), used as a label value.
    pub id: &'static str,
    pub name: &'static str,
    pub channel: Channel,
    /// The `mcr.microsoft.com/windows/*` tags built on this release, if any.
    pub base_image_tags: &'static [&'static str],
}

const fn release(
    build: u32,
    id: &'static str,
    name: &'static str,
    channel: Channel,
    base_image_tags: &'static [&'static str],
) -> Release {
    Release {
        build,
        id,
        name,
        channel,
        base_image_tags,
    }
}

use Channel::{Annual, Client, Ltsc, Sac};

/// Sorted by build. Build 26100 is both Windows Server 2025 and Windows 11 24H2; nodes cannot be told apart
/// reliably (osImage is unreliable, DOMAIN.md §1), so the server release names it.
pub const RELEASES: &[Release] = &[
    release(
        14393,
        "ltsc2016",
        "Windows Server 2016 (1607)",
        Ltsc,
        &["ltsc2016"],
    ),
    release(15063, "win10-1703", "Windows 10 1703", Client, &[]),
    release(
        16299,
        "1709",
        "Windows Server, version 1709",
        Sac,
        &["1709"],
    ),
    release(
        17134,
        "1803",
        "Windows Server, version 1803",
        Sac,
        &["1803"],
    ),
    release(
        17763,
        "ltsc2019",
        "Windows Server 2019 (1809)",
        Ltsc,
        &["ltsc2019", "1809"],
    ),
    release(
        18362,
        "1903",
        "Windows Server, version 1903",
        Sac,
        &["1903"],
    ),
    release(
        18363,
        "1909",
        "Windows Server, version 1909",
        Sac,
        &["1909"],
    ),
    release(
        19041,
        "2004",
        "Windows Server, version 2004",
        Sac,
        &["2004"],
    ),
    release(
        19042,
        "20h2",
        "Windows Server, version 20H2",
        Sac,
        &["20H2"],
    ),
    release(19043, "win10-21h1", "Windows 10 21H1", Client, &[]),
    release(19044, "win10-21h2", "Windows 10 21H2", Client, &[]),
    release(19045, "win10-22h2", "Windows 10 22H2", Client, &[]),
    release(
        20348,
        "ltsc2022",
        "Windows Server 2022",
        Ltsc,
        &["ltsc2022"],
    ),
    release(22000, "win11-21h2", "Windows 11 21H2", Client, &[]),
    release(22621, "win11-22h2", "Windows 11 22H2", Client, &[]),
    release(22631, "win11-23h2", "Windows 11 23H2", Client, &[]),
    release(25398, "23h2", "Windows Server, version 23H2", Annual, &[]),
    release(
        26100,
        "ltsc2025",
        "Windows Server 2025 (also Windows 11 24H2)",
        Ltsc,
        &["ltsc2025"],
    ),
    release(26200, "win11-25h2", "Windows 11 25H2", Client, &[]),
];

/// The release a build belongs to, if we know it.
pub fn release_for_build(build: u32) -> Option<&'static Release> {
    RELEASES
        .binary_search_by_key(&build, |r| r.build)
        .ok()
        .map(|i| &RELEASES[i])
}

/// The release a user names by id or base image tag (`ltsc2019`, `1809`, `20H2`), case-insensitively.
pub fn release_by_name(name: &str) -> Option<&'static Release> {
    let name = name.trim();
    RELEASES.iter().find(|r| {
        r.id.eq_ignore_ascii_case(name)
            || r.base_image_tags
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_unique_so_binary_search_works() {
        assert!(RELEASES.windows(2).all(|w| w[0].build < w[1].build));
    }

    #[test]
    fn ids_are_label_values() {
        for r in RELEASES {
            assert!(crate::core::labels::is_valid_label_value(r.id), "{}", r.id);
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(release_for_build(17763).map(|r| r.id), Some("ltsc2019"));
        assert_eq!(
            release_for_build(17111),
            None,
            "an Insider build is not a release"
        );
        assert_eq!(release_by_name("1809").map(|r| r.build), Some(17763));
        assert_eq!(release_by_name("LTSC2022").map(|r| r.build), Some(20348));
        assert_eq!(release_by_name("20h2").map(|r| r.build), Some(19042));
        assert_eq!(release_by_name("ltsc2030"), None);
    }
}
