//! Parsing of `status.nodeInfo.kernelVersion` in every format real nodes report (DOMAIN.md §1).
//!
//! The kubelet has reported the Windows version in several shapes over the years; Linux nodes report
//! their kernel release. This module turns any of them into a [`KernelVersion`], or a
//! [`KernelVersionError`] that says what is wrong. It never panics, whatever the input.

use std::fmt;

/// A Windows 10-family version: `10.0.BUILD.REVISION`. The major and minor are always `10.0` for every
/// Windows that runs containers, so only the build and the revision (UBR) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowsVersion {
    pub build: u32,
    /// `None` when the format carries no revision (e.g. `10.0.14393` from old kubelets).
    pub revision: Option<u32>,
}

impl WindowsVersion {
    pub const fn new(build: u32, revision: Option<u32>) -> Self {
        Self { build, revision }
    }
}

impl fmt::Display for WindowsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.revision {
            Some(revision) => write!(f, "10.0.{}.{}", self.build, revision),
            None => write!(f, "10.0.{}", self.build),
        }
    }
}

/// Which of the known shapes a Windows kernelVersion came in; it explains where the revision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// `10.0.17763.3887`: kubelet 1.9 and later, read from the registry.
    Dotted,
    /// `10.0.14393`: old kubelets, no revision.
    DottedNoRevision,
    /// `10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)`: `docker info` style.
    DockerEra,
    /// `16299.15.amd64fre.rs3_release.170928-1534`: kubelets before 1.9 reported BuildLabEx alone.
    BuildLabEx,
}

/// What a node's kernelVersion says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelVersion {
    /// Empty: the node has just joined and the kubelet has not reported yet. Wait; do not warn.
    NotReported,
    /// A Linux kernel release such as `5.15.0-1049-azure`.
    Linux,
    Windows(ParsedWindows),
}

/// A Windows version together with how it was reported and anything odd about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedWindows {
    pub version: WindowsVersion,
    pub format: KernelFormat,
    /// Set when a Docker-era string's BuildLabEx names another build than the outer one (an enablement
    /// package such as 20H2: `10.0 19042 (19041.1.…)`). The outer build wins.
    pub buildlab_build: Option<u32>,
}

/// Why a kernelVersion could not be understood. Each variant names the problem in its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelVersionError {
    #[error("kernel version is {len} bytes long; at most {MAX_INPUT_LEN} are accepted")]
    TooLong { len: usize },
    #[error("kernel version {input:?} is not a Windows or Linux version: {reason}")]
    Unrecognized { input: String, reason: &'static str },
    #[error(
        "kernel version {input:?} is Windows {major}.{minor}: Windows containers need Windows 10 / Server 2016 (10.0) or later"
    )]
    PreWindows10 {
        input: String,
        major: u32,
        minor: u32,
    },
    #[error("kernel version {input:?} has build {build}: Windows 10.0 builds are 10000 or higher")]
    BuildOutOfRange { input: String, build: u64 },
    #[error("kernel version {input:?}: {field} {text:?} is not a number")]
    NotANumber {
        input: String,
        field: &'static str,
        text: String,
    },
}

/// Real kernel versions are under 80 bytes; anything far longer is garbage and is refused before work.
pub const MAX_INPUT_LEN: usize = 256;

/// The lowest build of Windows 10.0 that shipped (Windows 10 1507 was 10240; previews started near 9800).
/// Lower numbers after `10.0.` are not Windows builds.
const MIN_WINDOWS_BUILD: u64 = 10_000;

/// Parses a node's `status.nodeInfo.kernelVersion`.
pub fn parse_kernel_version(input: &str) -> Result<KernelVersion, KernelVersionError> {
    if input.len() > MAX_INPUT_LEN {
        return Err(KernelVersionError::TooLong { len: input.len() });
    }
    let text = input.trim();
    if text.is_empty() {
        return Ok(KernelVersion::NotReported);
    }
    let unrecognized = |reason| KernelVersionError::Unrecognized {
        input: input.to_owned(),
        reason,
    };

    if let Some(rest) = text.strip_prefix("10.0 ") {
        return parse_docker_era(input, rest).map(KernelVersion::Windows);
    }
    if let Some(rest) = text.strip_prefix("10.0.") {
        return parse_dotted(input, rest).map(KernelVersion::Windows);
    }
    if looks_like_buildlabex(text) {
        let lab = parse_buildlabex(input, text)?;
        return Ok(KernelVersion::Windows(ParsedWindows {
            version: WindowsVersion::new(lab.build, Some(lab.revision)),
            format: KernelFormat::BuildLabEx,
            buildlab_build: None,
        }));
    }

    let (major, minor, third) = leading_numbers(text).ok_or_else(|| {
        unrecognized("expected 10.0.BUILD[.REVISION], 10.0 BUILD (BuildLabEx), a BuildLabEx or a Linux kernel release")
    })?;
    // Windows 6.x (Vista to 8.1) reports 6.MINOR.BUILD with a four-digit build; no Linux 6.0-6.3 kernel
    // ever had a patch level that high, so this cannot hide a real Linux node.
    if major == 6 && minor <= 3 && third.is_some_and(|build| build >= 6000) {
        return Err(KernelVersionError::PreWindows10 {
            input: input.to_owned(),
            // major is 6 and minor at most 3 here.
            major: 6,
            minor: u32::try_from(minor).unwrap_or(u32::MAX),
        });
    }
    if (2..10).contains(&major) && is_linux_release_text(text) {
        return Ok(KernelVersion::Linux);
    }
    Err(unrecognized(
        "it starts with numbers but is neither 10.0.BUILD nor a Linux release (MAJOR.MINOR[.PATCH][-SUFFIX])",
    ))
}

/// Parses a bare `BUILD` or `BUILD.REVISION` (e.g. `17763`, `14393.1715`): the shape of the osbuild label
/// and of image tags. Returns `None` when the text is not of that shape.
pub fn parse_build_revision(text: &str) -> Option<Result<WindowsVersion, KernelVersionError>> {
    let text = text.trim();
    let (build, revision) = match text.split_once('.') {
        Some((build, revision)) => (build, Some(revision)),
        None => (text, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(build) || !revision.is_none_or(all_digits) || build.len() < 5 {
        return None;
    }
    Some((|| {
        let build = parse_build(text, build)?;
        let revision = revision
            .map(|r| parse_number(text, "revision", r))
            .transpose()?;
        Ok(WindowsVersion::new(build, revision))
    })())
}

/// `10.0.B` or `10.0.B.R` (the `10.0.` prefix already removed).
fn parse_dotted(input: &str, rest: &str) -> Result<ParsedWindows, KernelVersionError> {
    let mut fields = rest.split('.');
    let build = parse_build(input, fields.next().unwrap_or_default())?;
    let revision = fields
        .next()
        .map(|r| parse_number(input, "revision", r))
        .transpose()?;
    if fields.next().is_some() {
        return Err(KernelVersionError::Unrecognized {
            input: input.to_owned(),
            reason: "too many fields: expected 10.0.BUILD or 10.0.BUILD.REVISION",
        });
    }
    Ok(ParsedWindows {
        version: WindowsVersion::new(build, revision),
        format: if revision.is_some() {
            KernelFormat::Dotted
        } else {
            KernelFormat::DottedNoRevision
        },
        buildlab_build: None,
    })
}

/// `B (BuildLabEx)` after the `10.0 ` prefix, as `docker info` printed it.
fn parse_docker_era(input: &str, rest: &str) -> Result<ParsedWindows, KernelVersionError> {
    let malformed = |reason| KernelVersionError::Unrecognized {
        input: input.to_owned(),
        reason,
    };
    let (outer, lab) = rest
        .split_once(' ')
        .ok_or_else(|| malformed("expected 10.0 BUILD (BuildLabEx)"))?;
    let build = parse_build(input, outer)?;
    let lab = lab
        .trim()
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| malformed("the BuildLabEx after the build must be in parentheses"))?;
    let lab = parse_buildlabex(input, lab)?;
    Ok(ParsedWindows {
        version: WindowsVersion::new(build, Some(lab.revision)),
        format: KernelFormat::DockerEra,
        buildlab_build: (lab.build != build).then_some(lab.build),
    })
}

struct BuildLab {
    build: u32,
    revision: u32,
}

/// `BUILD.REVISION.ARCH.BRANCH.DATE`, e.g. `14393.1715.amd64fre.rs1_release_inmarket.170906-1810`. Only the
/// first two fields matter; the rest must exist so a plain `14393.1715` is not mistaken for one.
fn parse_buildlabex(input: &str, lab: &str) -> Result<BuildLab, KernelVersionError> {
    let mut fields = lab.splitn(3, '.');
    let build = parse_build(input, fields.next().unwrap_or_default())?;
    let revision = parse_number(
        input,
        "BuildLabEx revision",
        fields.next().unwrap_or_default(),
    )?;
    if fields.next().is_none_or(str::is_empty) {
        return Err(KernelVersionError::Unrecognized {
            input: input.to_owned(),
            reason: "BuildLabEx must be BUILD.REVISION.ARCH.BRANCH.DATE",
        });
    }
    Ok(BuildLab { build, revision })
}

/// A bare BuildLabEx starts with a five-digit build, a revision, and an architecture ending in `fre`/`chk`
/// (free or checked build).
fn looks_like_buildlabex(text: &str) -> bool {
    let mut fields = text.split('.');
    let build = fields.next().unwrap_or_default();
    let revision = fields.next().unwrap_or_default();
    let arch = fields.next().unwrap_or_default();
    build.len() == 5
        && build.bytes().all(|b| b.is_ascii_digit())
        && !revision.is_empty()
        && revision.bytes().all(|b| b.is_ascii_digit())
        && (arch.ends_with("fre") || arch.ends_with("chk"))
}

/// The numeric `MAJOR.MINOR[.THIRD]` a version starts with, if it does.
fn leading_numbers(text: &str) -> Option<(u64, u64, Option<u64>)> {
    let numeric_prefix: &str = text
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or_default();
    let mut fields = numeric_prefix.split('.');
    let major = fields.next()?.parse().ok()?;
    let minor = fields.next()?.parse().ok()?;
    let third = fields.next().and_then(|t| t.parse().ok());
    Some((major, minor, third))
}

/// A Linux kernel release is `MAJOR.MINOR[.PATCH...]` with an optional suffix of letters, digits and
/// `-+._~` (`5.15.0-1049-azure`, `5.10.78.1-2.cm1`, `6.1.0+rpt-rpi-v8`). Spaces or other characters mean it
/// is something else.
fn is_linux_release_text(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_' | b'~'))
}

fn parse_build(input: &str, text: &str) -> Result<u32, KernelVersionError> {
    let build = parse_digits(input, "build", text)?;
    match u32::try_from(build) {
        Ok(build) if u64::from(build) >= MIN_WINDOWS_BUILD => Ok(build),
        _ => Err(KernelVersionError::BuildOutOfRange {
            input: input.to_owned(),
            build,
        }),
    }
}

fn parse_number(input: &str, field: &'static str, text: &str) -> Result<u32, KernelVersionError> {
    let value = parse_digits(input, field, text)?;
    u32::try_from(value).map_err(|_| KernelVersionError::NotANumber {
        input: input.to_owned(),
        field,
        text: text.to_owned(),
    })
}

/// Only ASCII digits (no sign, no spaces), at most 10 of them, so the value always fits in a u64.
fn parse_digits(input: &str, field: &'static str, text: &str) -> Result<u64, KernelVersionError> {
    let not_a_number = || KernelVersionError::NotANumber {
        input: input.to_owned(),
        field,
        text: text.to_owned(),
    };
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_number());
    }
    text.parse().map_err(|_| not_a_number())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(input: &str) -> ParsedWindows {
        match parse_kernel_version(input) {
            Ok(KernelVersion::Windows(parsed)) => parsed,
            other => panic!("{input:?} should parse as Windows, got {other:?}"),
        }
    }

    #[test]
    fn formats_from_domain_table() {
        // The examples of DOMAIN.md §1; the Docker-era ones are the seed's two nodes.
        let cases = [
            ("10.0.17763.3887", 17763, Some(3887), KernelFormat::Dotted),
            ("10.0.26100.32995", 26100, Some(32995), KernelFormat::Dotted),
            ("10.0.14393", 14393, None, KernelFormat::DottedNoRevision),
            (
                "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
                14393,
                Some(1715),
                KernelFormat::DockerEra,
            ),
            (
                "10.0 16299 (16299.0.amd64fre.rs3_release.170922-1354)",
                16299,
                Some(0),
                KernelFormat::DockerEra,
            ),
            (
                "16299.15.amd64fre.rs3_release.170928-1534",
                16299,
                Some(15),
                KernelFormat::BuildLabEx,
            ),
        ];
        for (input, build, revision, format) in cases {
            let parsed = windows(input);
            assert_eq!(
                parsed.version,
                WindowsVersion::new(build, revision),
                "{input}"
            );
            assert_eq!(parsed.format, format, "{input}");
            assert_eq!(parsed.buildlab_build, None, "{input}");
        }
    }

    #[test]
    fn enablement_package_outer_build_wins() {
        let parsed = windows("10.0 19042 (19041.1.amd64fre.vb_release.191206-1406)");
        assert_eq!(parsed.version, WindowsVersion::new(19042, Some(1)));
        assert_eq!(parsed.buildlab_build, Some(19041));
    }

    #[test]
    fn empty_means_not_reported() {
        assert_eq!(parse_kernel_version(""), Ok(KernelVersion::NotReported));
        assert_eq!(parse_kernel_version("  \t"), Ok(KernelVersion::NotReported));
    }

    #[test]
    fn linux_releases() {
        for input in [
            "5.15.0-1049-azure",
            "4.19.202",
            "5.10.78.1-2.cm1",
            "6.1.0+rpt-rpi-v8",
            "3.10.0-1160.el7.x86_64",
        ] {
            assert_eq!(
                parse_kernel_version(input),
                Ok(KernelVersion::Linux),
                "{input}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |input: &str| parse_kernel_version(input).unwrap_err().to_string();
        assert!(err("10.0.abc").contains("build \"abc\" is not a number"));
        assert!(err("10.0.17763.x").contains("revision \"x\" is not a number"));
        assert!(err("10.0.17763.1.2").contains("too many fields"));
        assert!(err("10.0.123").contains("builds are 10000 or higher"));
        assert!(err("10.0.99999999999").contains("is not a number"));
        assert!(err("6.3.9600").contains("Windows 6.3"));
        assert!(err("Windows Server 2019").contains("not a Windows or Linux version"));
        assert!(err("10.0 14393").contains("10.0 BUILD (BuildLabEx)"));
        assert!(err("10.0 14393 14393.1715.amd64fre.x.y").contains("parentheses"));
        assert!(err("10.0 14393 (14393.1715)").contains("BUILD.REVISION.ARCH"));
        assert!(err("12.0.1 build 7").contains("neither 10.0.BUILD nor a Linux release"));
        assert!(err(&"1".repeat(300)).contains("at most 256"));
    }

    #[test]
    fn bare_build_and_revision() {
        assert_eq!(
            parse_build_revision("17763"),
            Some(Ok(WindowsVersion::new(17763, None)))
        );
        assert_eq!(
            parse_build_revision("14393.1715"),
            Some(Ok(WindowsVersion::new(14393, Some(1715))))
        );
        assert_eq!(
            parse_build_revision("1809"),
            None,
            "a four-digit tag is not a build"
        );
        assert_eq!(parse_build_revision("10.0.17763"), None);
        assert_eq!(parse_build_revision("ltsc2019"), None);
        assert!(matches!(parse_build_revision("99999999999"), Some(Err(_))));
    }

    #[test]
    fn display_round_trips_dotted() {
        let version = WindowsVersion::new(17763, Some(3887));
        assert_eq!(version.to_string(), "10.0.17763.3887");
        assert_eq!(windows(&version.to_string()).version, version);
    }
}
