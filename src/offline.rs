//! The offline subcommands `explain`, `compat` and `classify`: answer from the core, render for people or
//! scripts. Each `*_report` function is the answer; each `*_command` function renders it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;

use serde::Serialize;

use crate::cli::{ClassifyArgs, CompatArgs, ExplainArgs, OutputFormat};
use crate::core::catalog::{Channel, release_by_name, release_for_build};
use crate::core::compat::{Compatibility, compat, process_isolation_builds};
use crate::core::labels::{LabelKeys, node_labels};
use crate::core::mismatch::{Classification, classify, is_ambiguous_platform_error};
use crate::core::version::{
    KernelFormat, KernelVersion, KernelVersionError, WindowsVersion, parse_build_revision,
    parse_kernel_version,
};

/// Why an offline command could not answer; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    KernelVersion(#[from] KernelVersionError),
    #[error(transparent)]
    LabelKeys(#[from] crate::core::labels::LabelKeyError),
    #[error("{what} {input:?} is a Linux kernel, not a Windows version")]
    NotWindows { what: &'static str, input: String },
    #[error("{what} is empty: give a Windows version such as 10.0.17763.3887, 17763 or ltsc2019")]
    Empty { what: &'static str },
    #[error("cannot read the message from standard input: {0}")]
    Stdin(#[from] std::io::Error),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `explain` says of a kernelVersion.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ExplainReport {
    pub kernel_version: String,
    /// `windows`, `linux` or `not-reported` (empty: the node has not reported yet).
    pub kind: &'static str,
    pub windows: bool,
    /// Which shape the kernelVersion came in (`dotted`, `dotted-no-revision`, `docker-era`, `buildlabex`).
    pub format: Option<&'static str>,
    pub build: Option<u32>,
    pub revision: Option<u32>,
    pub release: Option<&'static str>,
    pub release_name: Option<&'static str>,
    pub channel: Option<Channel>,
    pub osbuild: Option<String>,
    /// Image builds this host runs with process isolation.
    pub process_isolation_builds: Vec<u32>,
    /// Every label the controller would set on the node.
    pub labels: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

pub fn explain_report(
    kernel_version: &str,
    keys: &LabelKeys,
) -> Result<ExplainReport, KernelVersionError> {
    let mut report = ExplainReport {
        kernel_version: kernel_version.to_owned(),
        kind: "windows",
        windows: false,
        format: None,
        build: None,
        revision: None,
        release: None,
        release_name: None,
        channel: None,
        osbuild: None,
        process_isolation_builds: Vec::new(),
        labels: BTreeMap::new(),
        warnings: Vec::new(),
    };
    let parsed = match parse_kernel_version(kernel_version)? {
        KernelVersion::NotReported => {
            report.kind = "not-reported";
            report
                .warnings
                .push("empty kernelVersion: the node has not reported yet; the controller waits and sets no labels".into());
            return Ok(report);
        }
        KernelVersion::Linux => {
            report.kind = "linux";
            return Ok(report);
        }
        KernelVersion::Windows(parsed) => parsed,
    };
    let version = parsed.version;
    let release = release_for_build(version.build);
    let labels = node_labels(&parsed, keys);
    report.windows = true;
    report.format = Some(format_name(parsed.format));
    report.build = Some(version.build);
    report.revision = version.revision;
    report.release = release.map(|r| r.id);
    report.release_name = release.map(|r| r.name);
    report.channel = release.map(|r| r.channel);
    report.osbuild = labels.labels.get(keys.osbuild()).cloned();
    report.process_isolation_builds = process_isolation_builds(version.build);
    report
        .warnings
        .extend(labels.problem.iter().map(ToString::to_string));
    report.warnings.extend(labels.notes);
    report.labels = labels.labels;
    Ok(report)
}

fn format_name(format: KernelFormat) -> &'static str {
    match format {
        KernelFormat::Dotted => "dotted",
        KernelFormat::DottedNoRevision => "dotted-no-revision",
        KernelFormat::DockerEra => "docker-era",
        KernelFormat::BuildLabEx => "buildlabex",
    }
}

pub fn explain_command(args: &ExplainArgs) -> Result<String, OfflineError> {
    let report = explain_report(&args.kernel_version, &args.labels.keys()?)?;
    if args.output.output == OutputFormat::Json {
        return Ok(serde_json::to_string_pretty(&report)?);
    }
    let mut text = String::new();
    let show = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    let _ = writeln!(text, "kernelVersion: {:?}", report.kernel_version);
    let _ = writeln!(text, "kind:          {}", report.kind);
    if report.windows {
        let _ = writeln!(
            text,
            "format:        {}",
            show(report.format.map(Into::into))
        );
        let _ = writeln!(
            text,
            "build:         {}",
            show(report.build.map(|b| b.to_string()))
        );
        let _ = writeln!(
            text,
            "revision:      {}",
            show(report.revision.map(|r| r.to_string()))
        );
        let release = report
            .release
            .map(|id| format!("{id} ({})", report.release_name.unwrap_or_default()));
        let _ = writeln!(text, "release:       {}", show(release));
        let _ = writeln!(text, "osbuild:       {}", show(report.osbuild.clone()));
        let builds: Vec<String> = report
            .process_isolation_builds
            .iter()
            .map(u32::to_string)
            .collect();
        let _ = writeln!(
            text,
            "runs images:   {} (process isolation)",
            builds.join(", ")
        );
        let _ = writeln!(text, "labels:");
        for (key, value) in &report.labels {
            let _ = writeln!(text, "  {key}={value}");
        }
    }
    for warning in &report.warnings {
        let _ = writeln!(text, "warning: {warning}");
    }
    Ok(text.trim_end().to_owned())
}

/// What `compat` says of a host and an image.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CompatReport {
    pub host: VersionView,
    pub image: VersionView,
    #[serde(flatten)]
    pub answer: Compatibility,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct VersionView {
    pub build: u32,
    pub revision: Option<u32>,
    pub release: Option<&'static str>,
}

impl From<WindowsVersion> for VersionView {
    fn from(v: WindowsVersion) -> Self {
        Self {
            build: v.build,
            revision: v.revision,
            release: release_for_build(v.build).map(|r| r.id),
        }
    }
}

/// Reads a host or image version: `BUILD`, `BUILD.REVISION`, a release id or base image tag, or any
/// kernelVersion format.
pub fn parse_version_arg(what: &'static str, text: &str) -> Result<WindowsVersion, OfflineError> {
    if let Some(version) = parse_build_revision(text) {
        return Ok(version?);
    }
    if let Some(release) = release_by_name(text) {
        return Ok(WindowsVersion::new(release.build, None));
    }
    match parse_kernel_version(text)? {
        KernelVersion::Windows(parsed) => Ok(parsed.version),
        KernelVersion::Linux => Err(OfflineError::NotWindows {
            what,
            input: text.to_owned(),
        }),
        KernelVersion::NotReported => Err(OfflineError::Empty { what }),
    }
}

pub fn compat_report(host: &str, image: &str) -> Result<CompatReport, OfflineError> {
    let host = parse_version_arg("host", host)?;
    let image = parse_version_arg("image", image)?;
    Ok(CompatReport {
        host: host.into(),
        image: image.into(),
        answer: compat(host, image),
    })
}

pub fn compat_command(args: &CompatArgs) -> Result<String, OfflineError> {
    let report = compat_report(&args.host, &args.image)?;
    if args.output.output == OutputFormat::Json {
        return Ok(serde_json::to_string_pretty(&report)?);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    Ok(format!(
        "process isolation: {}\nHyper-V isolation: {}\nreason:            {}",
        yes_no(report.answer.process_isolation),
        yes_no(report.answer.hyperv_isolation),
        report.answer.reason
    ))
}

/// Standard input beyond this is ignored: real messages are a few KiB, and the classifier scans less.
const MAX_STDIN_BYTES: u64 = 1024 * 1024;

pub fn classify_command(args: &ClassifyArgs, stdin: &mut dyn Read) -> Result<String, OfflineError> {
    let message = if args.message == "-" {
        let mut bytes = Vec::new();
        stdin.take(MAX_STDIN_BYTES).read_to_end(&mut bytes)?;
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        args.message.clone()
    };
    let answer: Classification = classify(&message);
    if args.output.output == OutputFormat::Json {
        return Ok(serde_json::to_string_pretty(&answer)?);
    }
    Ok(match answer.variant {
        Some(variant) => format!("os mismatch: yes (variant {variant})"),
        None if is_ambiguous_platform_error(&message) => "os mismatch: not from the message alone (containerd's \"no match for platform\" names no OS: it is the mismatch, variant pull-no-match-for-platform, only if the image has Windows entries none of which the host runs; `osbuild-controller image REF` shows them, and the controller reads them)".to_owned(),
        None => "os mismatch: no".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_seed_node() {
        let report = explain_report(
            "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)",
            &LabelKeys::default(),
        )
        .unwrap();
        assert!(report.windows);
        assert_eq!(report.osbuild.as_deref(), Some("14393.1715"));
        assert_eq!(report.release, Some("ltsc2016"));
        assert_eq!(report.format, Some("docker-era"));
        assert!(report.warnings.is_empty());
    }

    #[test]
    fn explain_missing_revision_warns() {
        let report = explain_report("10.0.14393", &LabelKeys::default()).unwrap();
        assert_eq!(report.osbuild, None);
        assert_eq!(report.warnings.len(), 1);
        assert!(report.warnings[0].contains("revision"));
    }

    #[test]
    fn version_args() {
        let v = |s| parse_version_arg("host", s).unwrap();
        assert_eq!(v("ltsc2022"), WindowsVersion::new(20348, None));
        assert_eq!(v("1809"), WindowsVersion::new(17763, None));
        assert_eq!(v("14393.1715"), WindowsVersion::new(14393, Some(1715)));
        assert_eq!(v("10.0.26100.1"), WindowsVersion::new(26100, Some(1)));
        let e = |s| parse_version_arg("image", s).unwrap_err().to_string();
        assert!(e("5.15.0-1049-azure").contains("Linux kernel"));
        assert!(e("").contains("image is empty"));
        assert!(e("ltsc2030").contains("not a Windows or Linux version"));
    }

    #[test]
    fn classify_reads_stdin() {
        let args = ClassifyArgs {
            message: "-".into(),
            output: crate::cli::OutputArgs {
                output: OutputFormat::Json,
            },
        };
        let mut input: &[u8] =
            b"The container operating system does not match the host operating system.";
        let out = classify_command(&args, &mut input).unwrap();
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["os_mismatch"], true);
        assert_eq!(json["variant"], "hcsshim");
    }
}
