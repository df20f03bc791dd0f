//! Command-line interface. Every flag that configures behaviour can also come from an `OSBUILD_*`
//! environment variable, so the same binary is configured the same way in a shell and in a Pod spec.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::core::labels::{DEFAULT_LABEL_PREFIX, DEFAULT_OSBUILD_LABEL, LabelKeyError, LabelKeys};

#[derive(Debug, Parser)]
#[command(
    name = "osbuild-controller",
    version,
    about = "Labels Windows nodes by OS build and flags pods failing with the Windows container OS-version mismatch",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explain a node's status.nodeInfo.kernelVersion: build, revision, release and the labels it gets.
    Explain(ExplainArgs),
    /// Tell whether a host runs an image, with process and with Hyper-V isolation.
    Compat(CompatArgs),
    /// Tell whether a container or sandbox error message is the Windows OS-version mismatch.
    Classify(ClassifyArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    Text,
    /// One JSON object, for scripts.
    Json,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// The label keys; shared by `explain` and the controller so both name the same labels.
#[derive(Debug, Clone, Args)]
pub struct LabelArgs {
    /// Label key for the osbuild value (BUILD, or BUILD.REVISION before Windows Server 1709).
    #[arg(long, env = "OSBUILD_OSBUILD_LABEL", default_value = DEFAULT_OSBUILD_LABEL)]
    pub osbuild_label: String,
    /// DNS-subdomain prefix of the release, build, revision and process-isolation labels.
    #[arg(long, env = "OSBUILD_LABEL_PREFIX", default_value = DEFAULT_LABEL_PREFIX)]
    pub label_prefix: String,
}

impl LabelArgs {
    pub fn keys(&self) -> Result<LabelKeys, LabelKeyError> {
        LabelKeys::new(&self.osbuild_label, &self.label_prefix)
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A kernelVersion as nodes report it, e.g. "10.0.17763.3887" or
    /// "10.0 14393 (14393.1715.amd64fre.rs1_release_inmarket.170906-1810)".
    #[arg(allow_hyphen_values = true)]
    pub kernel_version: String,
    #[command(flatten)]
    pub labels: LabelArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct CompatArgs {
    /// The host's version: any kernelVersion format, BUILD, BUILD.REVISION, or a release such as ltsc2022.
    #[arg(long)]
    pub host: String,
    /// The image's version, in the same forms (a base image tag such as 1809 or ltsc2019 works too).
    #[arg(long)]
    pub image: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The message, or "-" to read it from standard input.
    #[arg(allow_hyphen_values = true)]
    pub message: String,
    #[command(flatten)]
    pub output: OutputArgs,
}
