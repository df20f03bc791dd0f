//! `osbuild-controller run`: wires the controller process. One kube client, one Node watch (the index),
//! one metrics registry, one shutdown signal; the HTTP server, the node controller and the pod detector run
//! side by side, and a loop that ends outside shutdown fails liveness.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::core::labels::LabelKeys;
use crate::health::Health;
use crate::index;
use crate::lease::{self, Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::nodes::{self, MANAGER, NodeContext};
use crate::pods::{self, PodContext};
use crate::server::{self, ServerState};

/// Objects per page of a watch's initial list. Each page is held whole while it is decoded; measured at
/// 1,000 nodes and 10,000 pods, pages of 100 instead of kube's 500 cut the peak RSS by 40% and list no
/// slower (docs/benchmarks.md).
pub const LIST_PAGE_SIZE: u32 = 100;

pub async fn run(args: RunArgs, keys: LabelKeys) -> anyhow::Result<()> {
    let health = Arc::new(Health::default());
    let metrics = Metrics::new().context("cannot register metrics")?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone(), health.clone()));

    let listener = server::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    let mut config = kube::Config::infer()
        .await
        .context("cannot find Kubernetes client configuration (KUBECONFIG or the in-cluster service account)")?;
    // kube retries 429, 503 and 504 itself, up to 15 times over minutes, invisibly: throttling and outages
    // would show in no metric, and a reconcile could hold a concurrency slot for minutes. Without it, every
    // failure reaches error_policy (counted by category, requeued in seconds) or the watcher's backoff
    // (counted, shown in readiness).
    config.default_retry = false;
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
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
        "starting osbuild-controller {}",
        env!("CARGO_PKG_VERSION")
    );

    let mut watch_config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let mut node_probe = kube::api::ListParams::default();
    if let Some(selector) = &args.node_selector {
        watch_config = watch_config.labels(selector);
        node_probe = node_probe.labels(selector);
    }
    tokio::spawn(index::probe_failing_watch(
        Api::<Node>::all(client.clone()),
        node_probe,
        index::NODE_WATCH,
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let (store, nodes_synced, changed_nodes) = index::watch_nodes(
        Api::<Node>::all(client.clone()),
        watch_config,
        keys.clone(),
        MANAGER,
        health.clone(),
        metrics.clone(),
    );
    let leadership = if args.leader_elect {
        Leadership::follower()
    } else {
        Leadership::always_leader()
    };
    // Released only after both writers have stopped, so two replicas never write at once.
    let lease_shutdown = CancellationToken::new();
    let election = args.leader_elect.then(|| {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_owned());
        let config = LeaseConfig {
            name: args.lease_name.clone(),
            identity: identity(),
            lease_duration: args.lease_duration,
            namespace: namespace.clone(),
        };
        tracing::info!(lease = %config.name, namespace = %namespace, identity = %config.identity, "leader election on");
        tokio::spawn(lease::run(
            Api::namespaced(client.clone(), &namespace),
            config,
            leadership.clone(),
            lease_shutdown.clone(),
        ))
    });

    let ctx = Arc::new(NodeContext {
        api: Api::all(client.clone()),
        keys: keys.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter()),
        force_conflicts: args.force_conflicts,
        dry_run: args.dry_run,
        resync: args.resync_interval,
        leadership: leadership.clone(),
        conflicted: Mutex::new(HashSet::new()),
    });

    let refresh = {
        let (store, keys, metrics) = (store.clone(), keys.clone(), metrics.clone());
        Arc::new(move || nodes::refresh_inventory(&store, &keys, &metrics))
    };
    let server_state = ServerState {
        health: health.clone(),
        metrics: metrics.clone(),
        refresh,
    };
    let server = tokio::spawn(server::serve(
        listener,
        server_state,
        shutdown.clone().cancelled_owned(),
    ));

    let nodes_synced_for_shutdown = nodes_synced.clone();
    tokio::spawn(follow_leadership(
        leadership.subscribe(),
        ctx.clone(),
        metrics.clone(),
    ));
    let pod_ctx = Arc::new(PodContext {
        client: client.clone(),
        nodes: store.clone(),
        nodes_synced,
        keys: keys.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter()),
        dry_run: args.dry_run,
        annotate: args.annotate_pods,
        leadership: leadership.clone(),
        namespace: args.namespace.clone(),
    });
    let pod_detector = {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        tokio::spawn(async move {
            pods::run(pod_ctx, health.clone(), shutdown.clone()).await;
            if !shutdown.is_cancelled() {
                tracing::error!("the pod detector stopped unexpectedly");
                health.loop_ended("pod-detector");
            }
        })
    };

    let controller = Controller::for_stream(changed_nodes, store)
        .with_config(
            ControllerConfig::default()
                .debounce(std::time::Duration::from_millis(100))
                .concurrency(args.concurrency),
        )
        .reconcile_all_on(became_leader(leadership.subscribe()))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(nodes::reconcile, nodes::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((node, _)) => tracing::trace!(node = %node.name, "reconciled"),
                // Reconcile errors are counted and logged by error_policy, watch errors by the index.
                Err(err) => tracing::debug!(error = %err, "controller event"),
            }
        });
    // kube-runtime's controller waits for its store before it reconciles, and that wait does not listen to
    // graceful_shutdown_on: a process whose Node watch never synced (no RBAC, no server) would ignore
    // SIGTERM. Before the sync nothing is in flight, so the controller can simply be dropped.
    let shutdown_before_sync = {
        let (shutdown, synced) = (shutdown.clone(), nodes_synced_for_shutdown);
        async move {
            shutdown.cancelled().await;
            if *synced.borrow() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = controller => {}
        _ = shutdown_before_sync => tracing::info!("shutting down before the node watch synced; nothing in flight"),
    }

    let unexpected = !shutdown.is_cancelled();
    if unexpected {
        health.loop_ended("node-controller");
        shutdown.cancel();
    }
    if let Err(err) = pod_detector.await {
        tracing::error!(error = %err, "the pod detector task failed");
    }
    lease_shutdown.cancel();
    if let Some(election) = election
        && let Err(err) = election.await
    {
        tracing::error!(error = %err, "the leader election task failed");
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(err).context("metrics server failed"),
        Err(err) => return Err(err).context("metrics server task failed"),
    }
    if unexpected {
        anyhow::bail!("the node controller stopped unexpectedly");
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Keeps `osbuild_leader` current, and forgets node conflicts when leadership is lost: a follower writes
/// nothing, so it has no conflicts to report.
async fn follow_leadership(
    mut changes: tokio::sync::watch::Receiver<bool>,
    ctx: Arc<NodeContext>,
    metrics: Metrics,
) {
    loop {
        let leader = *changes.borrow_and_update();
        metrics.leader.set(i64::from(leader));
        if !leader {
            ctx.forget_conflicts();
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Fires each time this replica becomes the leader, so it reconciles every node at once instead of waiting
/// for the resync interval.
fn became_leader(
    changes: tokio::sync::watch::Receiver<bool>,
) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(changes, |mut changes| async move {
        loop {
            changes.changed().await.ok()?;
            if *changes.borrow_and_update() {
                return Some(((), changes));
            }
        }
    })
}

/// This replica's name in the Lease: the pod name in a cluster, else host name and process id.
fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
}

/// Who we are on Events: the controller, and the pod when the Downward API gives its name.
fn reporter() -> Reporter {
    Reporter {
        controller: MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// SIGTERM (the kubelet) or SIGINT (a terminal): stop being ready at once, then let the loops finish the
/// work in hand and stop.
async fn shutdown_on_signal(shutdown: CancellationToken, health: Arc<Health>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = shutdown.cancelled() => {}
    }
    health.start_shutdown();
    shutdown.cancel();
}
