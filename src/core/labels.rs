//! The labels a Windows node should carry (DOMAIN.md §2 and §3), and Kubernetes label syntax.
//!
//! The osbuild label is the seed's: `BUILD.REVISION` before Windows Server, version 1709 (the revision must
//! match), `BUILD` from 1709 on. Our own labels, under one prefix, add the release, build, revision and one
//! label per image build the host runs process-isolated.

use std::collections::BTreeMap;

use super::catalog::release_for_build;
use super::compat::{process_isolation_builds, revision_must_match};
use super::version::{ParsedWindows, WindowsVersion};

/// The seed's label key.
pub const DEFAULT_OSBUILD_LABEL: &str = "beta.kubernetes.io/osbuild";
/// The prefix of every other label we set.
pub const DEFAULT_LABEL_PREFIX: &str = "osbuild-controller.io";

/// The label keys in use, validated once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelKeys {
    osbuild: String,
    prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelKeyError {
    #[error("osbuild label key {key:?} is not a valid Kubernetes label key: {reason}")]
    OsbuildKey { key: String, reason: String },
    #[error(
        "label prefix {prefix:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253): {reason}"
    )]
    Prefix { prefix: String, reason: String },
    #[error("osbuild label key {key:?} must not be under our own prefix {prefix:?}")]
    Overlap { key: String, prefix: String },
}

impl Default for LabelKeys {
    fn default() -> Self {
        Self {
            osbuild: DEFAULT_OSBUILD_LABEL.to_owned(),
            prefix: DEFAULT_LABEL_PREFIX.to_owned(),
        }
    }
}

impl LabelKeys {
    pub fn new(osbuild: &str, prefix: &str) -> Result<Self, LabelKeyError> {
        validate_label_key(osbuild).map_err(|reason| LabelKeyError::OsbuildKey {
            key: osbuild.to_owned(),
            reason,
        })?;
        validate_dns_subdomain(prefix).map_err(|reason| LabelKeyError::Prefix {
            prefix: prefix.to_owned(),
            reason,
        })?;
        if osbuild
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return Err(LabelKeyError::Overlap {
                key: osbuild.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        Ok(Self {
            osbuild: osbuild.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    pub fn osbuild(&self) -> &str {
        &self.osbuild
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn release(&self) -> String {
        format!("{}/release", self.prefix)
    }
    pub fn build(&self) -> String {
        format!("{}/build", self.prefix)
    }
    pub fn revision(&self) -> String {
        format!("{}/revision", self.prefix)
    }
    /// `PREFIX/process-isolation-V`, where V is the osbuild value an image must have to run on the host.
    pub fn process_isolation(&self, image_osbuild: &str) -> String {
        format!("{}/process-isolation-{image_osbuild}", self.prefix)
    }
    /// The annotation that opts a node out: its labels of ours are removed and no more are set.
    pub fn ignore_annotation(&self) -> String {
        format!("{}/ignore", self.prefix)
    }
    /// The pod annotation that carries an OS-mismatch finding (with `--annotate-pods`).
    pub fn mismatch_annotation(&self) -> String {
        format!("{}/os-mismatch", self.prefix)
    }
    /// Whether a label key is one this controller sets (the osbuild key or any key under our prefix).
    pub fn is_ours(&self, key: &str) -> bool {
        key == self.osbuild
            || key
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Why a node gets no osbuild label although it is Windows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelProblem {
    #[error(
        "build {build} needs the revision in its osbuild label (images must match the host's build and revision before 1709), and the kernel version carries none; no osbuild label is set, so that pods selecting {build}.REVISION are not placed on a host they cannot run on"
    )]
    RevisionUnknown { build: u32 },
}

/// The osbuild label value of a version: `BUILD` from 1709 (16299) on, `BUILD.REVISION` before.
pub fn osbuild_value(version: WindowsVersion) -> Result<String, LabelProblem> {
    if !revision_must_match(version.build) {
        return Ok(version.build.to_string());
    }
    match version.revision {
        Some(revision) => Ok(format!("{}.{revision}", version.build)),
        None => Err(LabelProblem::RevisionUnknown {
            build: version.build,
        }),
    }
}

/// Every label of ours a node should carry, and what kept any of them off.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeLabels {
    pub labels: BTreeMap<String, String>,
    /// Set when the osbuild label cannot be computed; the node deserves a warning.
    pub problem: Option<LabelProblem>,
    /// Facts worth telling a person but not worth a warning (an unknown release, an enablement package).
    pub notes: Vec<String>,
}

/// The labels for a Windows node whose kernelVersion parsed as `parsed`.
pub fn node_labels(parsed: &ParsedWindows, keys: &LabelKeys) -> NodeLabels {
    let version = parsed.version;
    let mut out = NodeLabels::default();
    let mut set = |key: String, value: String| out.labels.insert(key, value);

    set(keys.build(), version.build.to_string());
    if let Some(revision) = version.revision {
        set(keys.revision(), revision.to_string());
    }
    if let Some(release) = release_for_build(version.build) {
        set(keys.release(), release.id.to_owned());
    }
    match osbuild_value(version) {
        Ok(value) => {
            set(keys.osbuild().to_owned(), value);
        }
        Err(problem) => out.problem = Some(problem),
    }
    for image_build in process_isolation_builds(version.build) {
        // The host's own build at its own revision (WS2016) or any build the host accepts from 1709 on; a
        // WS2016 host with an unknown revision advertises nothing.
        let image = if image_build == version.build {
            version
        } else {
            WindowsVersion::new(image_build, None)
        };
        if let Ok(value) = osbuild_value(image) {
            set(keys.process_isolation(&value), "true".to_owned());
        }
    }

    if release_for_build(version.build).is_none() {
        out.notes.push(format!(
            "build {} is not a release we know (an Insider or newer build): labelled by its number only",
            version.build
        ));
    }
    if let Some(lab_build) = parsed.buildlab_build {
        out.notes.push(format!(
            "BuildLabEx names build {lab_build} but the kernel reports {}: an enablement package; the outer build wins",
            version.build
        ));
    }
    out
}

/// Whether `value` is a valid Kubernetes label value: at most 63 characters, empty or alphanumeric at both
/// ends with `-`, `_` and `.` between.
pub fn is_valid_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Checks a label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        validate_dns_subdomain(prefix).map_err(|reason| format!("prefix: {reason}"))?;
    }
    if !is_label_name(name) {
        return Err(format!(
            "name {name:?} must be 1-63 characters, alphanumeric at both ends, with '-', '_' or '.' between"
        ));
    }
    Ok(())
}

fn validate_dns_subdomain(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 253 {
        return Err("must be 1 to 253 characters".to_owned());
    }
    for part in text.split('.') {
        let bytes = part.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if !ok {
            return Err(format!(
                "part {part:?} must be lowercase letters, digits and '-', starting and ending alphanumeric"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::version::KernelFormat;

    fn parsed(build: u32, revision: Option<u32>) -> ParsedWindows {
        ParsedWindows {
            version: WindowsVersion::new(build, revision),
            format: KernelFormat::Dotted,
            buildlab_build: None,
        }
    }

    fn labels_of(build: u32, revision: Option<u32>) -> NodeLabels {
        node_labels(&parsed(build, revision), &LabelKeys::default())
    }

    #[test]
    fn osbuild_rule_of_the_seed() {
        assert_eq!(
            osbuild_value(WindowsVersion::new(14393, Some(1715))),
            Ok("14393.1715".into())
        );
        assert_eq!(
            osbuild_value(WindowsVersion::new(16299, Some(0))),
            Ok("16299".into())
        );
        assert_eq!(
            osbuild_value(WindowsVersion::new(17763, None)),
            Ok("17763".into())
        );
        assert_eq!(
            osbuild_value(WindowsVersion::new(14393, None)),
            Err(LabelProblem::RevisionUnknown { build: 14393 })
        );
    }

    #[test]
    fn ws2025_host_labels() {
        let labels = labels_of(26100, Some(32995)).labels;
        let expected: BTreeMap<String, String> = [
            ("beta.kubernetes.io/osbuild", "26100"),
            ("osbuild-controller.io/build", "26100"),
            ("osbuild-controller.io/revision", "32995"),
            ("osbuild-controller.io/release", "ltsc2025"),
            ("osbuild-controller.io/process-isolation-20348", "true"),
            ("osbuild-controller.io/process-isolation-26100", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn ws2016_host_advertises_its_exact_revision() {
        let out = labels_of(14393, Some(1715));
        assert_eq!(out.labels["beta.kubernetes.io/osbuild"], "14393.1715");
        assert_eq!(
            out.labels["osbuild-controller.io/process-isolation-14393.1715"],
            "true"
        );
        assert_eq!(out.problem, None);
    }

    #[test]
    fn ws2016_without_revision_gets_no_osbuild_and_a_problem() {
        let out = labels_of(14393, None);
        assert!(!out.labels.contains_key("beta.kubernetes.io/osbuild"));
        assert!(!out.labels.keys().any(|k| k.contains("process-isolation")));
        assert_eq!(out.labels["osbuild-controller.io/release"], "ltsc2016");
        assert_eq!(
            out.problem,
            Some(LabelProblem::RevisionUnknown { build: 14393 })
        );
    }

    #[test]
    fn unknown_build_is_labelled_by_number_with_a_note() {
        let out = labels_of(17111, Some(1));
        assert_eq!(out.labels["beta.kubernetes.io/osbuild"], "17111");
        assert!(!out.labels.contains_key("osbuild-controller.io/release"));
        assert_eq!(out.notes.len(), 1);
    }

    #[test]
    fn key_validation() {
        assert!(LabelKeys::new("beta.kubernetes.io/osbuild", "example.com").is_ok());
        assert!(LabelKeys::new("osbuild", "example.com").is_ok());
        let err = |o: &str, p: &str| LabelKeys::new(o, p).unwrap_err().to_string();
        assert!(err("bad key!", "example.com").contains("not a valid Kubernetes label key"));
        assert!(err("a/", "example.com").contains("name \"\""));
        assert!(err("x/osbuild", "Example.com").contains("not a DNS subdomain"));
        assert!(err("x/osbuild", "example.com/").contains("not a DNS subdomain"));
        assert!(
            err("example.com/osbuild", "example.com").contains("must not be under our own prefix")
        );
        assert!(err(&format!("x/{}", "a".repeat(64)), "example.com").contains("1-63"));
    }

    #[test]
    fn ownership() {
        let keys = LabelKeys::default();
        assert!(keys.is_ours("beta.kubernetes.io/osbuild"));
        assert!(keys.is_ours("osbuild-controller.io/release"));
        assert!(!keys.is_ours("osbuild-controller.iox/release"));
        assert!(!keys.is_ours("beta.kubernetes.io/os"));
    }

    #[test]
    fn label_value_syntax() {
        for ok in ["", "14393.1715", "ltsc2019", "a", "20h2"] {
            assert!(is_valid_label_value(ok), "{ok}");
        }
        for bad in ["-a", "a-", ".1", "a b", "ü", &"a".repeat(64)] {
            assert!(!is_valid_label_value(bad), "{bad}");
        }
    }
}
