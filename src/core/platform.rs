//! An image's platforms as its registry describes them (DOMAIN.md §3 "Images"): what `src/registry` reads
//! and what [`super::runs_on`] decides from. Plain data, no I/O.

use serde::Serialize;

use super::version::{KernelVersion, WindowsVersion, parse_kernel_version};

/// How the image is published: it decides whether containerd chooses among entries at pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// An OCI image index or a Docker manifest list: each host pulls the entry that best matches it.
    Index,
    /// A single image manifest: pulled as it is on any host, checked only when the container starts.
    Manifest,
}

/// Where an entry's `os.version` was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionSource {
    /// The index entry's `platform."os.version"`.
    Index,
    /// The image config's `os.version` (a single manifest, or an index entry without it).
    Config,
    /// Neither says it.
    Unknown,
}

/// One image of an index (or the single image of a manifest), attestations already left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// `windows`, `linux`, ...
    pub os: String,
    pub architecture: String,
    /// `os.version` as written (e.g. `10.0.20348.2655`), from the index entry or else the config.
    pub os_version: Option<String>,
    pub version_source: VersionSource,
    /// An index entry without `os.version`: containerd's matcher accepts it on every host, so a host that
    /// no other entry matches pulls it, whatever build it really is.
    pub matches_any_host: bool,
    /// The manifest's digest, for people who want to look further.
    pub digest: Option<String>,
}

impl Platform {
    pub fn is_windows(&self) -> bool {
        self.os.eq_ignore_ascii_case("windows")
    }

    /// The Windows version of this image (`10.0.BUILD[.REVISION]`), when it is Windows and says one.
    pub fn windows_version(&self) -> Option<WindowsVersion> {
        if !self.is_windows() {
            return None;
        }
        parse_os_version(self.os_version.as_deref()?)
    }
}

/// Every platform of an image, in the order its index lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImagePlatforms {
    pub kind: ImageKind,
    pub platforms: Vec<Platform>,
}

impl ImagePlatforms {
    pub fn has_windows(&self) -> bool {
        self.platforms.iter().any(Platform::is_windows)
    }
}

/// Reads an `os.version` such as `10.0.20348.2655` or `10.0.17763`. Anything else (another major/minor,
/// text) is not a version we can place by.
pub fn parse_os_version(text: &str) -> Option<WindowsVersion> {
    let text = text.trim();
    if !text.starts_with("10.0.") {
        return None;
    }
    match parse_kernel_version(text) {
        Ok(KernelVersion::Windows(parsed)) => Some(parsed.version),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_versions() {
        assert_eq!(
            parse_os_version("10.0.20348.2655"),
            Some(WindowsVersion::new(20348, Some(2655)))
        );
        assert_eq!(
            parse_os_version("10.0.17763"),
            Some(WindowsVersion::new(17763, None))
        );
        assert_eq!(
            parse_os_version(" 10.0.26100.32995 "),
            Some(WindowsVersion::new(26100, Some(32995)))
        );
        for bad in [
            "",
            "6.3.9600",
            "10.0",
            "10.0.x",
            "5.15.0-1049-azure",
            "ltsc2022",
        ] {
            assert_eq!(parse_os_version(bad), None, "{bad:?}");
        }
    }
}
