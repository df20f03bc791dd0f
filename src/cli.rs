//! Command-line interface. Every flag that configures behaviour can also come from an `OSBUILD_*`
//! environment variable, so the same binary is configured the same way in a shell and in a Pod spec.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::core::labels::{DEFAULT_LABEL_PREFIX, DEFAULT_OSBUILD_LABEL, LabelKeyError, LabelKeys};
use crate::watches::InitialList;

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
    /// Run the controller in a cluster (or against KUBECONFIG): label Windows nodes, serve metrics and health.
    Run(Box<RunArgs>),
    /// Explain a node's status.nodeInfo.kernelVersion: build, revision, release and the labels it gets.
    Explain(ExplainArgs),
    /// Tell whether a host runs an image, with process and with Hyper-V isolation.
    Compat(CompatArgs),
    /// Tell whether a container or sandbox error message is the Windows OS-version mismatch.
    Classify(ClassifyArgs),
    /// Read an image's platforms from its registry and the osbuild values of the hosts that run it.
    Image(ImageArgs),
    /// Remove the osbuild-controller.io/image-os scheduling gate from pods (other gates stay), e.g. before
    /// uninstalling the controller.
    Ungate(UngateArgs),
    /// Audit every Windows workload: will it run on the nodes it can land on (ok, at-risk, broken, unknown)?
    /// Exit 0 when all are ok, 1 otherwise (for CI pipelines), 2 on an error.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Audit the workloads of one namespace only; all namespaces by default.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Upgrade planning: assume the nodes a label selector picks report this kernelVersion, e.g.
    /// `agentpool=win19=10.0.26100.1`; repeatable (the last match wins).
    #[arg(long = "if-nodes", value_name = "SELECTOR=KERNEL_VERSION")]
    pub if_nodes: Vec<crate::audit::what_if::WhatIf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct UngateArgs {
    /// Pods to release, by name (in --namespace).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub pods: Vec<String>,
    /// Every pod carrying the gate: in --namespace, or in every namespace without it.
    #[arg(long)]
    pub all: bool,
    /// The pods' namespace ("default" for pods named on the command line).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// First delete this MutatingAdmissionPolicyBinding (the placement policy's), so that no new pod is
    /// gated while the gated ones are released; one already gone is fine. The Helm chart's uninstall hook
    /// runs `ungate --all --stop-gating=<release>-osbuild-controller-placement` (docs/placement.md).
    #[arg(long, value_name = "BINDING")]
    pub stop_gating: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
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
    /// The image's version, in the same forms (a base image tag such as 1809 or ltsc2019 works too), or an
    /// image reference (registry/repository[:tag|@digest]) to read from its registry.
    #[arg(long)]
    pub image: String,
    /// Docker config JSON with registry credentials, for an image reference (see `image --help`).
    #[arg(long, env = "OSBUILD_DOCKER_CONFIG")]
    pub docker_config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// How to reach registries; shared by `image`, `compat --image REF` and the controller.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// PEM file of CA certificates to trust for registries, beside the system's.
    #[arg(long, env = "OSBUILD_REGISTRY_CA_FILE")]
    pub registry_ca_file: Option<std::path::PathBuf>,
    /// A registry (HOST[:PORT], as written in image references) to reach over plain HTTP; repeatable.
    #[arg(long, env = "OSBUILD_REGISTRY_INSECURE", value_delimiter = ',')]
    pub registry_insecure: Vec<String>,
    /// Limit for reading one image from its registry, every request included (e.g. 10s).
    #[arg(long, env = "OSBUILD_REGISTRY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub registry_timeout: Duration,
}

impl RegistryArgs {
    pub fn options(&self) -> crate::registry::RegistryOptions {
        crate::registry::RegistryOptions {
            ca_file: self.registry_ca_file.clone(),
            insecure: self.registry_insecure.clone(),
            timeout: self.registry_timeout,
            ..Default::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image reference, e.g. registry.example.com/team/app:1.2 or app@sha256:...
    pub reference: String,
    /// Docker config JSON with registry credentials (~/.docker/config.json, or a pull secret's
    /// .dockerconfigjson); anonymous without it.
    #[arg(long, env = "OSBUILD_DOCKER_CONFIG")]
    pub docker_config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the cluster is: kubectl's `--kubeconfig`, else `$KUBECONFIG`, `~/.kube/config`, or the in-cluster
/// service account.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Path to a kubeconfig file (as kubectl's --kubeconfig); by default $KUBECONFIG, ~/.kube/config, or
    /// the in-cluster service account.
    #[arg(long, env = "OSBUILD_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // independent on/off flags, as users type them
pub struct RunArgs {
    #[command(flatten)]
    pub labels: LabelArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "OSBUILD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Take over labels that another field manager owns with other values (server-side apply force).
    #[arg(long, env = "OSBUILD_FORCE_CONFLICTS")]
    pub force_conflicts: bool,
    /// Compute and log every change; write nothing (no labels, no events).
    #[arg(long, env = "OSBUILD_DRY_RUN")]
    pub dry_run: bool,
    /// Also record each OS-mismatch finding as an annotation on the pod (needs RBAC to patch pods).
    #[arg(long, env = "OSBUILD_ANNOTATE_PODS")]
    pub annotate_pods: bool,
    /// Watch pods (and their sandbox Events) in this namespace only; all namespaces by default.
    #[arg(long, env = "OSBUILD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Elect a leader on a coordination.k8s.io Lease: only the leader writes; other replicas stay warm.
    #[arg(long, env = "OSBUILD_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "OSBUILD_LEASE_NAME", default_value = "osbuild-controller")]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to the controller's own namespace (--pod-namespace), else "default".
    #[arg(long, env = "OSBUILD_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's pod name (from the Downward API): its identity in the Lease and on Events.
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
    /// This replica's namespace (from the Downward API): where the Lease lives by default.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// How long a leader's lease lasts without renewal before another replica may take over.
    #[arg(long, env = "OSBUILD_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Only watch nodes matching this label selector (e.g. "kubernetes.io/os=windows"); all nodes by default.
    #[arg(long, env = "OSBUILD_NODE_SELECTOR")]
    pub node_selector: Option<String>,
    /// Look at every node again this often even when nothing changed (e.g. 30s, 10m, 1h).
    #[arg(long, env = "OSBUILD_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// How every watch gets its initial state: `streaming` (one watch streams every object, no list request;
    /// falls back to `paged` where the server refuses) or `paged` (lists in pages of 100).
    #[arg(long, env = "OSBUILD_INITIAL_LIST", value_enum, default_value_t = InitialList::Streaming)]
    pub initial_list: InitialList,
    /// How many nodes are reconciled at once (bounds API load and memory during a cold start).
    #[arg(long, env = "OSBUILD_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Place gated Windows pods on hosts that run their images (needs the admission policy of
    /// manifests/components/placement); --placement=false turns it off.
    #[arg(long, env = "OSBUILD_PLACEMENT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub placement: bool,
    /// How long a pod stays gated while its registry fails; then it is scheduled without a host constraint
    /// and a Warning Event ImageOSUnknown says why.
    #[arg(long, env = "OSBUILD_PLACEMENT_DEADLINE", default_value = "30s", value_parser = parse_duration)]
    pub placement_deadline: Duration,
    /// Run the audit (as `osbuild-controller audit` does) this often and export its verdicts as metrics
    /// (osbuild_workloads, osbuild_workload_verdict; e.g. 10m). Off by default; needs the read-only rights
    /// of manifests/components/audit.
    #[arg(long, env = "OSBUILD_AUDIT_INTERVAL", value_parser = parse_duration)]
    pub audit_interval: Option<Duration>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Log format.
    #[arg(long, env = "OSBUILD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, in RUST_LOG syntax (e.g. "info", "osbuild_controller=debug,kube=warn").
    #[arg(long, env = "OSBUILD_LOG_FILTER", default_value = "info")]
    pub log_filter: String,
}

impl RunArgs {
    /// The Lease's namespace: `--lease-namespace`, else our own, else "default".
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| self.pod_namespace.clone())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    }

    /// This replica's name in the Lease: the pod name in a cluster, else host name and process id.
    pub fn identity(&self) -> String {
        self.pod_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            })
    }
}

/// Parses "90s", "10m", "1h" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 10m or 1h"))?;
    let seconds = match unit {
        "s" => value,
        "m" => value.saturating_mul(60),
        "h" => value.saturating_mul(3600),
        _ => return Err(format!("{text:?}: unit must be s, m or h")),
    };
    if seconds == 0 {
        return Err("the interval must be at least 1s".to_owned());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10d").unwrap_err().contains("unit"));
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
