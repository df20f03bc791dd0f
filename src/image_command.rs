//! `osbuild-controller image REF` and `compat --image REF`: read an image from its registry and say where
//! it runs. The registry is `crate::registry`'s; the answer is `core::runs_on`'s.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::{CompatArgs, ImageArgs, OutputFormat, RegistryArgs};
use crate::core::platform::{ImageKind, Platform, VersionSource};
use crate::core::runs_on::{Isolation, Verdict, host_verdict, pulled_platform, runs_on};
use crate::offline::{VersionView, parse_version_arg};
use crate::registry::credentials::{Credential, Keyring, SecretFormat, parse_pull_secret};
use crate::registry::{Freshness, Registry, RegistryError, ResolvedImage};

/// Why `image` could not answer: bad input, or the registry (with its category).
#[derive(Debug, thiserror::Error)]
pub enum ImageCommandError {
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error("docker config {path}: {detail}")]
    DockerConfig { path: String, detail: String },
    #[error(transparent)]
    Offline(#[from] crate::offline::OfflineError),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One platform as `image -o json` prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PlatformView {
    pub os: String,
    pub architecture: String,
    pub os_version: Option<String>,
    pub build: Option<u32>,
    /// Where os_version was read: `index`, `config` or `unknown`.
    pub version_source: VersionSource,
    /// An index entry without os.version, which containerd pulls on any host.
    pub matches_any_host: bool,
    pub digest: Option<String>,
}

impl From<&Platform> for PlatformView {
    fn from(p: &Platform) -> Self {
        Self {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            os_version: p.os_version.clone(),
            build: p.windows_version().map(|v| v.build),
            version_source: p.version_source,
            matches_any_host: p.matches_any_host,
            digest: p.digest.clone(),
        }
    }
}

/// What `image` says of a reference.
#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub image: String,
    pub reference: String,
    pub digest: String,
    pub kind: ImageKind,
    pub platforms: Vec<PlatformView>,
    /// osbuild values of the hosts that run it with process isolation.
    pub runs_on: Vec<String>,
    /// osbuild values of the hosts that run it with Hyper-V isolation.
    pub runs_on_hyperv: Vec<String>,
    pub windows: bool,
    /// Some Windows platform's build is unknown: `runs_on` may leave hosts out.
    pub incomplete: bool,
    pub notes: Vec<String>,
}

pub fn image_report(resolved: &ResolvedImage) -> ImageReport {
    let process = runs_on(&resolved.platforms, Isolation::Process);
    let hyperv = runs_on(&resolved.platforms, Isolation::HyperV);
    ImageReport {
        image: resolved.image.clone(),
        reference: resolved.reference.clone(),
        digest: resolved.digest.clone(),
        kind: resolved.platforms.kind,
        platforms: resolved
            .platforms
            .platforms
            .iter()
            .map(Into::into)
            .collect(),
        runs_on: process.values,
        runs_on_hyperv: hyperv.values,
        windows: process.windows,
        incomplete: process.incomplete,
        notes: process.notes,
    }
}

fn credentials(
    path: Option<&std::path::Path>,
    image: &str,
) -> Result<Vec<Credential>, ImageCommandError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let bad = |detail: String| ImageCommandError::DockerConfig {
        path: path.display().to_string(),
        detail,
    };
    let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let entries =
        parse_pull_secret(SecretFormat::DockerConfigJson, &data).map_err(|e| bad(e.to_string()))?;
    Ok(Keyring::new(entries).lookup(image))
}

async fn resolve(
    image: &str,
    docker_config: Option<&std::path::Path>,
    registry: &RegistryArgs,
) -> Result<std::sync::Arc<ResolvedImage>, ImageCommandError> {
    let credentials = credentials(docker_config, image)?;
    let registry = Registry::new(registry.options())?;
    Ok(registry
        .resolve(image, &credentials, Freshness::Refresh)
        .await?)
}

pub async fn image_command(args: &ImageArgs) -> Result<String, ImageCommandError> {
    let resolved = resolve(
        &args.reference,
        args.docker_config.as_deref(),
        &args.registry,
    )
    .await?;
    let report = image_report(&resolved);
    if args.output.output == OutputFormat::Json {
        return Ok(serde_json::to_string_pretty(&report)?);
    }
    let mut text = String::new();
    let _ = writeln!(text, "image:     {}", report.reference);
    let _ = writeln!(text, "digest:    {}", report.digest);
    let kind = match report.kind {
        ImageKind::Index => "index (each host pulls its best entry)",
        ImageKind::Manifest => "single manifest",
    };
    let _ = writeln!(text, "kind:      {kind}");
    let _ = writeln!(text, "platforms:");
    for p in &report.platforms {
        let version = p.os_version.as_deref().unwrap_or("no os.version");
        let source = match p.version_source {
            VersionSource::Config => " (from its config)",
            VersionSource::Index | VersionSource::Unknown => "",
        };
        let any = if p.matches_any_host {
            " [no os.version in the index: matches any host]"
        } else {
            ""
        };
        let _ = writeln!(text, "  {}/{} {version}{source}{any}", p.os, p.architecture);
    }
    if report.windows {
        let show = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        let _ = writeln!(
            text,
            "runs on osbuild: {} (process isolation)",
            show(&report.runs_on)
        );
        let _ = writeln!(
            text,
            "                 {} (Hyper-V isolation)",
            show(&report.runs_on_hyperv)
        );
    }
    for note in &report.notes {
        let _ = writeln!(text, "note: {note}");
    }
    Ok(text.trim_end().to_owned())
}

/// Whether `compat --image` names an image reference (read from a registry) rather than a version.
pub fn is_image_reference(text: &str) -> bool {
    parse_version_arg("image", text).is_err() && (text.contains('/') || text.contains('@'))
}

/// What `compat --host H --image REF` says.
#[derive(Debug, Serialize)]
pub struct ImageCompatReport {
    pub host: VersionView,
    pub image: String,
    pub digest: String,
    /// The platform this host pulls (containerd's pick for an index).
    pub pulled: Option<PlatformView>,
    pub process_isolation: bool,
    pub hyperv_isolation: bool,
    pub reason: String,
}

pub async fn compat_image_command(args: &CompatArgs) -> Result<String, ImageCommandError> {
    let host = parse_version_arg("host", &args.host)?;
    let resolved = resolve(&args.image, args.docker_config.as_deref(), &args.registry).await?;
    let image = &resolved.platforms;
    let pulled = pulled_platform(image, host);
    let process = host_verdict(image, host, Isolation::Process);
    let hyperv = host_verdict(image, host, Isolation::HyperV);
    let reason = match (pulled, process) {
        (None, _) if image.has_windows() => format!(
            "no Windows entry matches build {} (containerd: no matching manifest)",
            host.build
        ),
        (None, _) => "the image has no Windows platform".to_owned(),
        (Some(p), Verdict::Unknown) => format!(
            "the host pulls {}/{} whose build is unknown (no os.version)",
            p.os, p.architecture
        ),
        (Some(p), _) => match p.windows_version() {
            Some(v) => format!(
                "the host pulls the {} entry: {}",
                p.os_version.as_deref().unwrap_or_default(),
                crate::core::compat::compat(host, v).reason
            ),
            None => "the host pulls an entry without a Windows version".to_owned(),
        },
    };
    let report = ImageCompatReport {
        host: host.into(),
        image: resolved.reference.clone(),
        digest: resolved.digest.clone(),
        pulled: pulled.map(Into::into),
        process_isolation: process == Verdict::Runs,
        hyperv_isolation: hyperv == Verdict::Runs,
        reason,
    };
    if args.output.output == OutputFormat::Json {
        return Ok(serde_json::to_string_pretty(&report)?);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    Ok(format!(
        "process isolation: {}\nHyper-V isolation: {}\nreason:            {}",
        yes_no(report.process_isolation),
        yes_no(report.hyperv_isolation),
        report.reason
    ))
}
