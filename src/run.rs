//! `osbuild-controller run`: wiring only. It builds the state every loop shares, starts each loop, and
//! lets the supervisor run them all: a loop that ends outside shutdown fails liveness and stops the process.
//! Adding a loop is one module plus one line here.

use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use kube::runtime::events::Recorder;
use tokio_util::sync::CancellationToken;

use crate::cli::{ClusterArgs, RunArgs};
use crate::core::labels::LabelKeys;
use crate::health::Health;
use crate::lease::{self, LeaderGauge, Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::nodes::{self, NodeOptions};
use crate::placement::{self, PlacementOptions};
use crate::pods::{self, PodOptions};
use crate::registry::{self, Registry};
use crate::server::{self, ServerState};
use crate::shared::{self, Shared};
use crate::supervisor::Supervisor;
use crate::{audit, index, signals};

pub async fn run(args: RunArgs, keys: LabelKeys) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    let metrics = Metrics::new().context("cannot register metrics")?;
    let listener = server::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    let client = client(&args.cluster).await?;
    log_configuration(&args, &keys);
    let leadership = if args.leader_elect {
        Leadership::follower()
    } else {
        Leadership::always_leader()
    };
    metrics.register(Box::new(LeaderGauge::new(leadership.clone())?))?;

    let shutdown = CancellationToken::new();
    let mut tasks = Supervisor::new(shutdown.clone(), health.clone());
    tasks.spawn(
        "signals",
        signals::shutdown_on_signal(shutdown, health.clone()),
    );
    let (index, changed_nodes) = index::start(
        &client,
        args.node_selector.as_deref(),
        args.initial_list,
        &keys,
        &health,
        &metrics,
        &mut tasks,
    );
    let registry = Arc::new(
        Registry::new(args.registry.options())
            .context("cannot set up the registry client")?
            .observe_requests(metrics.registry_request_duration.clone()),
    );
    metrics.register(Box::new(registry::RegistryCollector::new(
        registry.clone(),
    )?))?;
    tasks.spawn(
        "registry-upkeep",
        registry::upkeep(registry.clone(), leadership.subscribe(), tasks.shutdown()),
    );
    let shared = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), shared::reporter(args.pod_name.clone())),
        reporter: shared::reporter(args.pod_name.clone()),
        client,
        keys,
        metrics: metrics.clone(),
        health: health.clone(),
        leadership,
        dry_run: args.dry_run,
        nodes: index.0,
        nodes_synced: index.1,
        initial_list: args.initial_list,
        registry,
    });

    nodes::start(&shared, node_options(&args), changed_nodes, &mut tasks)?;
    pods::start(
        &shared,
        &PodOptions {
            annotate: args.annotate_pods,
            namespace: args.namespace.clone(),
        },
        &mut tasks,
    );
    if args.placement {
        placement::start(&shared, &placement_options(&args), &mut tasks)?;
    }
    if let Some(interval) = args.audit_interval {
        audit::in_cluster::start(&shared, audit_options(&args, interval), &mut tasks)?;
    }
    if args.leader_elect {
        lease::start(&shared, lease_config(&args), &mut tasks);
    }
    tasks.spawn_final("http-server", move |stop| {
        server::serve(
            listener,
            ServerState { health, metrics },
            stop.cancelled_owned(),
        )
    });

    tasks.wait().await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// The client for `--kubeconfig`, else the usual inference (KUBECONFIG, ~/.kube/config, in-cluster).
pub async fn client(cluster: &ClusterArgs) -> anyhow::Result<Client> {
    let mut config = match &cluster.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "cannot find Kubernetes client configuration (--kubeconfig, KUBECONFIG or the in-cluster service account)",
        )?,
    };
    // kube retries 429, 503 and 504 itself, up to 15 times over minutes, invisibly: throttling and outages
    // would show in no metric, and a reconcile could hold a concurrency slot for minutes. Without it, every
    // failure reaches error_policy (counted by category, requeued in seconds) or the watcher's backoff
    // (counted, shown in readiness).
    config.default_retry = false;
    crate::api_client::build(config)
}

fn node_options(args: &RunArgs) -> NodeOptions {
    NodeOptions {
        force_conflicts: args.force_conflicts,
        resync: args.resync_interval,
        concurrency: args.concurrency,
    }
}

fn placement_options(args: &RunArgs) -> PlacementOptions {
    PlacementOptions {
        deadline: args.placement_deadline,
        namespace: args.namespace.clone(),
    }
}

fn audit_options(args: &RunArgs, interval: std::time::Duration) -> audit::in_cluster::AuditOptions {
    audit::in_cluster::AuditOptions {
        interval,
        namespace: args.namespace.clone(),
    }
}

fn lease_config(args: &RunArgs) -> LeaseConfig {
    LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace(),
        identity: args.identity(),
        lease_duration: args.lease_duration,
    }
}

fn log_configuration(args: &RunArgs, keys: &LabelKeys) {
    tracing::info!(
        metrics_addr = %args.metrics_addr,
        osbuild_label = keys.osbuild(),
        label_prefix = keys.prefix(),
        dry_run = args.dry_run,
        force_conflicts = args.force_conflicts,
        node_selector = args.node_selector.as_deref().unwrap_or(""),
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        annotate_pods = args.annotate_pods,
        leader_elect = args.leader_elect,
        resync_interval = ?args.resync_interval,
        concurrency = args.concurrency,
        placement = args.placement,
        placement_deadline = ?args.placement_deadline,
        audit_interval = ?args.audit_interval,
        "starting osbuild-controller {}",
        env!("CARGO_PKG_VERSION")
    );
}
